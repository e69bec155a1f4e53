"""The importer and the declared input contract: your own interactions in, daily partitions out, bad input named."""

from __future__ import annotations

import dataclasses
import datetime
import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from recsys_tasks.cli import main as cli_main
from recsys_tasks.config import Config, ConfigError
from recsys_tasks.data.contract import ALICCP_CONTRACT, input_contract
from recsys_tasks.data.importer import FeatureTable, ImportSpec, import_interactions
from recsys_tasks.data.partitions import MANIFEST_NAME, MissingPartitionError
from recsys_tasks.data.sources import generate_data
from recsys_tasks.runtime import InputDataError

DAY = 86_400
START = int(datetime.datetime(2026, 3, 1, tzinfo=datetime.timezone.utc).timestamp())


def _ratings(tmp_path, rows=None):
    """RecBole-style atomic files: 3 users, 4 items, 6 days with day 3 (2026-03-04) empty."""
    rows = rows or [
        (1, 10, 5, START + 3600), (2, 10, 2, START + 2 * 3600), (1, 11, 4, START + DAY + 60),
        (3, 12, 3, START + 2 * DAY + 5), (2, 13, 4, START + 4 * DAY + 7), (3, 10, 1, START + 5 * DAY + 9),
    ]
    inter = tmp_path / "r.inter"
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    lines += [f"{u}\t{i}\t{r}\t{t}" for u, i, r, t in rows]
    inter.write_text("\n".join(lines) + "\n")
    users = tmp_path / "r.user"
    users.write_text("user_id:token\tage:token\tgender:token\tzip:token\n1\t24\tM\t1\n2\t53\tF\t2\n3\t24\tF\t3\n")
    items = tmp_path / "r.item"
    items.write_text("item_id:token\tclass:token_seq\tyear:token\n10\tA B\t1995\n11\tA\t1994\n12\tC\t1995\n"
                     "13\tB C\t1990\n")
    return inter, users, items


def _spec(tmp_path, inter, users=None, items=None, **kwargs):
    options = dict(user_col="user_id:token", item_col="item_id:token", time_col="timestamp:float",
                   rating_col="rating:float", rating_threshold=4.0)
    options.update(kwargs)
    user_table = FeatureTable(users, "user_id:token", {"age:token": "age", "gender:token": "gender"}) if users else None
    item_table = FeatureTable(items, "item_id:token", {"year:token": "year"}) if items else None
    return ImportSpec(interactions=inter, root=tmp_path / "parts", users=user_table, items=item_table, **options)


def test_ratings_become_daily_partitions_with_empty_days_and_manifests(tmp_path):
    inter, users, items = _ratings(tmp_path)
    summary = import_interactions(_spec(tmp_path, inter, users, items))
    assert summary["first_day"] == "2026-03-01" and summary["last_day"] == "2026-03-06"
    assert summary["days"] == 6 and summary["empty_days"] == ["2026-03-04"]
    assert summary["rows"] == 6 and summary["clicks"] == 3  # ratings 5, 4, 4 reach the threshold
    assert summary["settings"]["data.user_features"] == "age,gender"
    assert summary["settings"]["scoring.exclude"] == "interacted"  # a rated item is not recommended again
    empty = tmp_path / "parts" / "dt=2026-03-04"
    assert json.loads((empty / MANIFEST_NAME).read_text())["rows"] == 0
    assert len(pd.read_parquet(empty / "part-0.parquet")) == 0
    first = pd.read_parquet(tmp_path / "parts" / "dt=2026-03-01" / "part-0.parquet")
    assert first["user_id"].tolist() == [1, 2] and first["click"].tolist() == [1, 0]
    assert first["rating"].tolist() == [5.0, 2.0] and first["timestamp"].tolist() == [START + 3600, START + 7200]
    # Integers stay themselves; text categories get one code per distinct value (F=0, M=1).
    assert first["age"].tolist() == [24, 53] and first["gender"].tolist() == [1, 0]
    assert first["year"].tolist() == [1995, 1995]


def test_the_time_zone_defines_the_day(tmp_path):
    inter, _, _ = _ratings(tmp_path)
    summary = import_interactions(_spec(tmp_path, inter, timezone="America/New_York"))
    # 01:00 and 02:00 UTC on March 1st are still February 28th in New York.
    assert summary["first_day"] == "2026-02-28"
    day = pd.read_parquet(tmp_path / "parts" / "dt=2026-02-28" / "part-0.parquet")
    assert day["item_id"].tolist() == [10, 10]


@pytest.mark.parametrize(
    "rows, options, message",
    [
        ([(1, 10, "five", START)], {}, r"r.inter: column 'rating:float' holds 'five' at row 0; expected a number"),
        ([(1, -3, 4, START)], {}, r"column 'item_id:token' holds '-3' at row 0; expected a non-negative integer id"),
        ([(1, 10, 4, "yesterday")], {}, r"column 'timestamp:float' holds 'yesterday' at row 0"),
        ([(1, 10, 2, START)], {"rating_col": "", "label_col": "rating:float", "rating_threshold": None},
         r"column 'rating:float' holds '2' at row 0; expected 0 or 1"),
        ([(1, 10, 4, START)], {"user_col": "uid"}, r"r.inter: no column 'uid' \(user id\); the file has"),
        ([(9, 10, 4, START)], {"users": True}, r"r.inter: user_id 9 has no row in .*r.user \(column 'user_id:token'\)"),
    ],
)
def test_bad_input_names_file_column_and_value(tmp_path, rows, options, message):
    inter, users, _ = _ratings(tmp_path, rows)
    table = users if options.pop("users", False) else None
    with pytest.raises(InputDataError, match=message):
        import_interactions(_spec(tmp_path, inter, table, **options))
    assert not (tmp_path / "parts").exists()


def test_bad_settings_are_config_errors(tmp_path):
    inter, _, _ = _ratings(tmp_path)
    with pytest.raises(ConfigError, match="not an IANA time zone"):
        import_interactions(_spec(tmp_path, inter, timezone="Mars/Olympus"))
    with pytest.raises(ConfigError, match="--start must be a day written YYYY-MM-DD, got '1/3/2026'"):
        import_interactions(_spec(tmp_path, inter, start="1/3/2026"))
    with pytest.raises(ConfigError, match="needs --rating-threshold"):
        import_interactions(_spec(tmp_path, inter, rating_threshold=None))


def test_cli_imports_and_reports_bad_input_in_one_line(tmp_path, capsys):
    inter, users, _ = _ratings(tmp_path)
    argv = ["import-interactions", str(inter), "--root", str(tmp_path / "parts"), "--user-col", "user_id:token",
            "--item-col", "item_id:token", "--time-col", "timestamp:float", "--rating-col", "rating:float",
            "--rating-threshold", "4", "--users", str(users), "--user-key", "user_id:token",
            "--user-features", "gender:token=gender"]
    assert cli_main(argv) == 0
    assert json.loads(capsys.readouterr().out)["days"] == 6
    inter.write_text(inter.read_text().replace("\t5\t", "\tbad\t"))
    assert cli_main(argv) == 1
    assert "input error:" in capsys.readouterr().err


def _config(tmp_path, end_date, window_days=6, **more):
    return Config().with_overrides({
        "data.source": "parquet", "data.partition_root": str(tmp_path / "parts"), "data.end_date": end_date,
        "data.window_days": window_days, "data.valid_days": 1, **more})


def test_parquet_source_reads_imported_days_counting_empty_ones(tmp_path):
    inter, users, items = _ratings(tmp_path)
    import_interactions(_spec(tmp_path, inter, users, items))
    config = _config(tmp_path, "2026-03-06", **{"data.user_features": "age,gender", "data.item_features": "year"})
    summary = generate_data(config, tmp_path / "run")
    assert summary["window"]["empty_days"] == ["2026-03-04"]
    assert summary["window"]["rows_per_day"]["2026-03-04"] == 0
    assert summary["splits"]["train"]["rows"] == 5 and summary["splits"]["valid"]["rows"] == 1
    assert summary["contract"] == {"user_features": ["age", "gender"], "item_features": ["year"]}
    copied = pd.read_parquet(tmp_path / "run" / "raw" / "train")
    assert {"user_id", "item_id", "click", "age", "gender", "year"} == set(copied.columns)  # the contract's only
    assert copied["item_id"].tolist() == [10, 10, 11, 12, 13]  # day by day, in time order
    # Four non-empty training days become one raw part (NVTabular pays per part), or parts of <= part_rows.
    assert summary["splits"]["train"]["parts"] == 1 and summary["splits"]["train"]["files"] == 4
    small = generate_data(config.with_overrides({"data.part_rows": 2}), tmp_path / "run5")
    assert small["splits"]["train"]["parts"] == 3  # days of 2, 1, 1, 1 rows: [2], [1, 1], [1]
    parts = sorted((tmp_path / "run5" / "raw" / "train").glob("*.parquet"))
    assert [len(pd.read_parquet(f)) for f in parts] == [2, 2, 1]

    # Ids only: no feature column is required (the Ali-CCP default would want 14 of them).
    ids_only = generate_data(_config(tmp_path, "2026-03-06", **{"data.user_features": "",
                                                                 "data.item_features": ""}), tmp_path / "run2")
    assert ids_only["splits"]["valid"]["rows"] == 1
    with pytest.raises(InputDataError, match=r"missing column\(s\) \['item_category'"):
        generate_data(_config(tmp_path, "2026-03-06"), tmp_path / "run3")
    with pytest.raises(InputDataError, match=r"missing column\(s\) \['occupation'\]; expected the declared"):
        generate_data(_config(tmp_path, "2026-03-06", **{"data.user_features": "occupation",
                                                         "data.item_features": ""}), tmp_path / "run4")


def test_missing_day_empty_split_and_changed_partition_are_errors(tmp_path):
    inter, _, _ = _ratings(tmp_path)
    import_interactions(_spec(tmp_path, inter))
    ids_only = {"data.user_features": "", "data.item_features": ""}
    with pytest.raises(MissingPartitionError, match=r"dt=2026-02-28 \(no such directory\)"):
        generate_data(_config(tmp_path, "2026-03-06", window_days=7, **ids_only), tmp_path / "run")
    with pytest.raises(InputDataError, match=r"every valid day of the window \(2026-03-04..2026-03-04\) is empty"):
        generate_data(_config(tmp_path, "2026-03-04", window_days=3, **ids_only), tmp_path / "run")
    day = tmp_path / "parts" / "dt=2026-03-02" / "part-0.parquet"
    pd.read_parquet(day).iloc[:0].to_parquet(day, index=False)
    with pytest.raises(InputDataError, match=r"dt=2026-03-02: the parquet files hold 0 rows but .* says 1"):
        generate_data(_config(tmp_path, "2026-03-06", **ids_only), tmp_path / "run")


def test_contract_declarations(tmp_path):
    assert input_contract(Config().data) == ALICCP_CONTRACT
    assert len(ALICCP_CONTRACT.raw_columns) == 17
    declared = input_contract(Config().with_overrides({"data.user_features": " age, gender",
                                                       "data.item_features": ""}).data)
    assert declared.raw_columns == {"user_id": "i", "item_id": "i", "age": "i", "gender": "i", "click": "i"}
    for value, message in (("click", "reserved"), ("a b", "not a column name"), ("a,a", "declared twice")):
        with pytest.raises(ConfigError, match=message):
            input_contract(Config().with_overrides({"data.user_features": value}).data)
    mixed = input_contract(Config().with_overrides({"data.user_features": "age:continuous,gender:categorical",
                                                    "data.item_features": "year:continuous"}).data)
    assert mixed.user_features == ("gender",) and mixed.user_continuous == ("age",)
    assert mixed.raw_columns == {"user_id": "i", "item_id": "i", "gender": "i", "click": "i", "age": "f", "year": "f"}
    with pytest.raises(ConfigError, match="declares the kind 'weird'; known kinds: categorical, continuous"):
        input_contract(Config().with_overrides({"data.user_features": "age:weird"}).data)
    with pytest.raises(ConfigError, match="planted generates Ali-CCP columns"):
        generate_data(Config().with_overrides({"data.user_features": "age"}), tmp_path / "run")
    assert not (tmp_path / "run" / "raw").exists()


def test_continuous_features_are_imported_as_numbers_and_checked(tmp_path):
    inter, users, items = _ratings(tmp_path)
    spec = _spec(tmp_path, inter, users, items)
    spec = dataclasses.replace(spec, users=FeatureTable(users, "user_id:token", {"age:token": "age:continuous",
                                                                                "gender:token": "gender"}))
    summary = import_interactions(spec)
    assert summary["settings"]["data.user_features"] == "age:continuous,gender"
    first = pd.read_parquet(tmp_path / "parts" / "dt=2026-03-01" / "part-0.parquet")
    assert first["age"].dtype == np.float64 and first["age"].tolist() == [24.0, 53.0]
    config = _config(tmp_path, "2026-03-06", **{"data.user_features": "age:continuous,gender",
                                                "data.item_features": "year"})
    assert generate_data(config, tmp_path / "run")["contract"]["user_continuous"] == ["age"]
    day = tmp_path / "parts" / "dt=2026-03-02" / "part-0.parquet"
    pd.read_parquet(day).assign(age=np.inf).to_parquet(day, index=False)
    with pytest.raises(InputDataError, match=r"dt=2026-03-02/part-0.parquet: column 'age' holds inf \(row 0\)"):
        generate_data(config, tmp_path / "run")
    users.write_text(users.read_text().replace("\t53\t", "\tfifty\t"))
    with pytest.raises(InputDataError, match=r"r.user: column 'age:token' holds 'fifty' at row 1; expected a number"):
        import_interactions(spec)


GENRES = ("Action", "Comedy", "Drama", "Horror", "Sci-Fi")


def _genre_data(tmp_path, users=40, items=30, days=8, per_day=110):
    """ML-100K-shaped files: ratings, a user table, an item table whose genre column is space-separated text
    (RecBole's ``token_seq``); each user likes one genre, so genres carry signal."""
    rng = np.random.default_rng(7)
    item_genres = [sorted(rng.choice(GENRES, size=rng.integers(1, 4), replace=False)) for _ in range(items)]
    favourite = rng.choice(GENRES, size=users)
    rows = []
    for day in range(days):
        for _ in range(per_day):
            user, item = int(rng.integers(users)), int(rng.integers(items))
            rating = 5 if favourite[user] in item_genres[item] else int(rng.integers(1, 4))
            rows.append((user + 1, item + 100, rating, START + day * DAY + int(rng.integers(DAY))))
    inter = tmp_path / "g.inter"
    inter.write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                     + "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    user_file = tmp_path / "g.user"
    languages = ("en", "en fr", "de", "fr es de")  # a multi-valued user feature too
    user_file.write_text("user_id:token\tgender:token\tlanguages:token_seq\n"
                         + "".join(f"{u + 1}\t{'MF'[u % 2]}\t{languages[u % 4]}\n" for u in range(users)))
    item_file = tmp_path / "g.item"
    item_file.write_text("item_id:token\tyear:token\tclass:token_seq\n"
                         + "".join(f"{i + 100}\t{1990 + i % 5}\t{' '.join(g)}\n" for i, g in enumerate(item_genres)))
    return inter, user_file, item_file, item_genres


def test_multi_valued_genres_go_through_import_transform_both_models_and_scoring(tmp_path):
    from recsys_tasks.features.lists import ListColumn
    from recsys_tasks.paths import RunPaths
    from recsys_tasks.scoring.catalog import load_catalog
    from recsys_tasks.scoring.ranker import FactoredRanker, _embedding_tables, make_ranker, pair_features, rank_pairs
    from recsys_tasks.stages import run_stage
    from recsys_tasks.training.loader import parquet_dataset
    from recsys_tasks.training.ranking import load_dlrm
    from recsys_tasks.training.retrieval import build_two_tower, encode, model_schema

    inter, user_file, item_file, item_genres = _genre_data(tmp_path)
    spec = _spec(tmp_path, inter)
    spec = dataclasses.replace(spec, users=FeatureTable(user_file, "user_id:token", {
        "gender:token": "gender", "languages:token_seq": "languages:multi"}),
                               items=FeatureTable(item_file, "item_id:token",
                                                  {"year:token": "year", "class:token_seq": "genres:multi"}))
    summary = import_interactions(spec)
    assert summary["settings"]["data.item_features"] == "year,genres:multi"
    day = pd.read_parquet(tmp_path / "parts" / "dt=2026-03-01" / "part-0.parquet")
    # Genre text is coded one integer per distinct genre, sorted: Action=0, Comedy=1, ...
    coded = {int(i): list(g) for i, g in zip(day["item_id"], day["genres"])}
    assert all(coded[i] == [GENRES.index(g) for g in item_genres[i - 100]] for i in coded)

    config = _config(tmp_path, "2026-03-08", window_days=8, **{
        **{k: v for k, v in summary["settings"].items() if k != "data.partition_root"},
        "retrieval.epochs": 2, "retrieval.batch_size_rows": 64, "ranking.epochs": 2, "ranking.batch_size_rows": 128,
        "scoring.top_k": 10, "scoring.top_n": 5, "scoring.user_chunk_size": 16, "evaluate.plots": False})
    run_dir = tmp_path / "run"
    stages = {name: run_stage(name, config, run_dir) for name in
              ("generate_data", "transform", "fit_retrieval", "fit_ranking", "score", "evaluate")}
    assert stages["generate_data"]["contract"]["item_multi"] == ["genres"]
    assert stages["generate_data"]["contract"]["user_multi"] == ["languages"]
    paths = RunPaths(run_dir)
    from merlin.io import Dataset
    from merlin.schema.tags import Tags

    genres = Dataset(str(paths.train / "*.parquet"), engine="parquet").schema["genres"]
    assert {Tags.CATEGORICAL, Tags.LIST, Tags.ITEM} <= set(genres.tags) and genres.is_ragged

    # Both models embed the genres (Merlin prunes an input it is not fed, silently).
    assert "genres" in _embedding_tables(load_dlrm(paths.dlrm))
    train = parquet_dataset(paths.retrieval_train, config.transform.part_size)
    two_tower = build_two_tower(model_schema(train), config.retrieval)
    items = pd.read_parquet(paths.item_features)
    assert encode(two_tower.candidate_encoder, items, ["item_id", "year", "genres"], 7).shape == (len(items), 64)
    assert "genres" in _embedding_tables(two_tower.candidate_encoder)
    # The exported query tower takes the user's languages as values/offsets and reproduces the embeddings.
    import tensorflow as tf

    tower = tf.keras.models.load_model(str(paths.query_tower))
    user_table = pd.read_parquet(paths.user_features)
    stored = pd.read_parquet(paths.user_embeddings).drop(columns=["user_id", "popularity_bias"]).to_numpy()
    np.testing.assert_allclose(encode(tower, user_table, ["user_id", "gender", "languages"], 16), stored,
                               rtol=1e-4, atol=1e-5)
    assert set(stages["fit_ranking"]["input_features"]) == {"user_id", "item_id", "year", "genres", "gender",
                                                            "languages"}
    assert "languages" in _embedding_tables(load_dlrm(paths.dlrm))
    assert "genres" in pd.read_parquet(paths.item_features).columns

    catalog = load_catalog(paths, config.scoring.exclude)
    assert isinstance(catalog.item_features["genres"], ListColumn)
    model = load_dlrm(paths.dlrm)
    users = np.arange(catalog.num_users)
    candidates = np.tile(np.arange(min(8, catalog.num_items)), (len(users), 1))
    whole = rank_pairs(model, pair_features(catalog, users, candidates), 97).reshape(candidates.shape)
    for kernel in ("tensorflow", "numba"):
        ranker = make_ranker(model, catalog, 97, pair_kernel=kernel)
        assert isinstance(ranker, FactoredRanker)  # the per-item genre vectors are pooled, not a fallback
        assert np.allclose(ranker(users, candidates), whole, atol=2e-5)
    # The genres reach the score: other genres, other probabilities.
    shuffled = dataclasses.replace(catalog, item_features={**catalog.item_features,
                                                           "genres": catalog.item_features["genres"][::-1]})
    changed = rank_pairs(model, pair_features(shuffled, users, candidates), 97).reshape(candidates.shape)
    assert np.abs(changed - whole).max() > 1e-4
    recommendations = pd.read_parquet(paths.recommendations)
    assert len(recommendations) == catalog.num_users and stages["score"]["users"] == catalog.num_users


def test_multi_valued_features_from_parquet_lists_and_bad_lists_are_named(tmp_path):
    inter, users, items = _ratings(tmp_path)
    # A parquet item table whose genres are a list column: no separator needed, text coded, integers kept.
    table = tmp_path / "items.parquet"
    pd.DataFrame({"item": [10, 11, 12, 13], "genres": [["b", "a"], ["a"], ["c"], ["c", "b"]],
                  "tags": [[7], [7, 9], [9], [3]]}).to_parquet(table, index=False)
    spec = dataclasses.replace(_spec(tmp_path, inter), items=FeatureTable(
        table, "item", {"genres": "genres:multi", "tags": "tags:multi"}))
    import_interactions(spec)
    first = pd.read_parquet(tmp_path / "parts" / "dt=2026-03-01" / "part-0.parquet")  # items 10 and 10
    assert [list(g) for g in first["genres"]] == [[1, 0], [1, 0]] and [list(t) for t in first["tags"]] == [[7], [7]]
    empty_day = tmp_path / "parts" / "dt=2026-03-04" / "part-0.parquet"
    assert str(pq.read_schema(empty_day).field("genres").type) == "list<item: int64>"  # typed, though empty
    config = _config(tmp_path, "2026-03-06", **{"data.user_features": "", "data.item_features": "genres:multi,tags"})
    with pytest.raises(InputDataError, match=r"dt=2026-03-01/part-0.parquet: column 'tags' has type "
                                             r"list<item: int64>, expected an integer"):
        generate_data(config, tmp_path / "run")
    config = config.with_overrides({"data.item_features": "genres:multi,tags:multi"})
    assert generate_data(config, tmp_path / "run")["contract"]["item_multi"] == ["genres", "tags"]

    # A partition changed by hand: an empty list, then a list of text, each named with file, column and row.
    day = tmp_path / "parts" / "dt=2026-03-02" / "part-0.parquet"
    frame = pd.read_parquet(day)
    frame.assign(genres=[np.array([], dtype=np.int64)]).to_parquet(day, index=False)
    with pytest.raises(InputDataError, match=r"dt=2026-03-02/part-0.parquet: column 'genres' holds an empty list "
                                             r"at row 0; a multi-valued feature needs at least one value"):
        generate_data(config, tmp_path / "run")
    frame.assign(genres=[["x"]]).to_parquet(day, index=False)
    with pytest.raises(InputDataError, match=r"dt=2026-03-02/part-0.parquet: column 'genres' has type "
                                             r"list<item: string>, expected a list of integers"):
        generate_data(config, tmp_path / "run")

    # Text input: a cell of separators only is an empty list.
    items.write_text(items.read_text().replace("C\t1995", " \t1995"))
    spec = dataclasses.replace(_spec(tmp_path, inter), items=FeatureTable(items, "item_id:token",
                                                                         {"class:token_seq": "genres:multi"}))
    with pytest.raises(InputDataError, match=r"r.item: column 'class:token_seq' holds ' ' at row 2; expected at "
                                             r"least one value, separated by ' ' \(multi-valued\)"):
        import_interactions(spec)
    with pytest.raises(ConfigError, match="declares the kind 'mutli'; known kinds: categorical, continuous, multi"):
        input_contract(Config().with_overrides({"data.item_features": "genres:mutli"}).data)


def test_list_columns_gather_and_slice_like_python_lists():
    from recsys_tasks.features.lists import ListColumn, as_column, model_batch

    lists = [np.array([3, 1]), np.array([7]), np.array([2, 2, 5]), np.array([4])]
    column = as_column(np.array(lists + [None], dtype=object)[:-1])
    assert isinstance(column, ListColumn) and column.offsets.tolist() == [0, 2, 3, 6, 7]

    def rows(c):
        return [c.values[c.offsets[r]:c.offsets[r + 1]].tolist() for r in range(len(c))]

    assert rows(column[np.array([2, 0, 2, 3])]) == [[2, 2, 5], [3, 1], [2, 2, 5], [4]]
    assert rows(column[1:3]) == [[7], [2, 2, 5]] and rows(column[::2]) == [[3, 1], [2, 2, 5]]
    assert len(column[3:3]) == 0 and len(column[np.array([], dtype=np.int64)]) == 0
    batch = model_batch({"genres": column, "year": np.arange(4)}, 1, 3)
    assert batch["genres__values"].tolist() == [7, 2, 2, 5] and batch["genres__offsets"].tolist() == [0, 1, 4]
    assert batch["year"].tolist() == [[1], [2]]
