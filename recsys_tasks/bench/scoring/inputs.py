"""Synthetic inputs at scale (what the ``score`` stage reads) and user subsets of a run."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from ...config import RankingConfig
from ...features.tables import ITEM_COLUMNS, USER_COLUMNS
from ...features.workflow import ITEM_FEATURES, TARGET, USER_FEATURES
from ...paths import RunPaths
from ...runtime import get_logger, quiet_tensorflow
from ..common import EMBEDDING_DIM

log = get_logger("bench")


def feature_cardinalities(num_users: int, num_items: int) -> dict[str, int]:
    """Cardinalities of the synthetic inputs: ids at full scale, Ali-CCP-like sizes for the rest."""
    cards = {"user_id": num_users, "item_id": num_items}
    cards.update({c: max(2, min(num_items, 1000 if c == "item_category" else 10_000)) for c in ITEM_FEATURES})
    small = {"user_gender": 3, "user_age": 8, "user_group": 14, "user_is_occupied": 3, "user_consumption_2": 4,
             "user_geography": 5, "user_profile": 100}
    cards.update({c: small.get(c, max(2, min(num_users, 10_000))) for c in USER_FEATURES})
    return cards


def scale_schema(cardinalities: dict[str, int]) -> Any:
    """A Merlin schema tagged like the transform stage's output (ids, user/item features, binary target)."""
    from merlin.schema import ColumnSchema, Schema, Tags

    def column(name: str, tags: list[Any]) -> Any:
        domain = {"min": 0, "max": cardinalities[name] - 1, "name": name}
        return ColumnSchema(name, tags=tags, dtype=np.int32, properties={"domain": domain})

    columns = [
        column("user_id", [Tags.USER_ID, Tags.USER, Tags.CATEGORICAL, Tags.ID]),
        column("item_id", [Tags.ITEM_ID, Tags.ITEM, Tags.CATEGORICAL, Tags.ID]),
        *[column(c, [Tags.ITEM, Tags.CATEGORICAL]) for c in ITEM_FEATURES],
        *[column(c, [Tags.USER, Tags.CATEGORICAL]) for c in USER_FEATURES],
        ColumnSchema(TARGET, tags=[Tags.BINARY_CLASSIFICATION, Tags.TARGET], dtype=np.int32),
    ]
    return Schema(columns)


def _embeddings_table(ids: np.ndarray, vectors: np.ndarray, id_column: str) -> Any:
    import pyarrow as pa

    columns = {id_column: pa.array(ids)}
    columns.update({f"e{i}": pa.array(vectors[:, i]) for i in range(vectors.shape[1])})
    return pa.table(columns)


def build_scale_run(
    root: Path, num_users: int, num_items: int, *, seed: int = 7, clicks_per_user: int = 3,
    train_rows: int = 50_000, ranking: RankingConfig | None = None,
) -> RunPaths:
    """Write everything the ``score`` stage reads, at the requested scale, into run directory ``root``."""
    quiet_tensorflow()
    import pandas as pd
    import pyarrow.parquet as pq

    from ...training.ranking import build_dlrm

    paths = RunPaths(root)
    rng = np.random.default_rng(seed)
    cards = feature_cardinalities(num_users, num_items)
    started = time.perf_counter()
    paths.fresh(paths.retrieval)
    users = {"user_id": np.arange(num_users, dtype=np.int32)}
    users.update({c: rng.integers(0, cards[c], num_users, dtype=np.int32) for c in USER_FEATURES})
    # Raw ids differ from encoded ids, so a mix-up between the two cannot go unnoticed.
    users["user_id_raw"] = users["user_id"].astype(np.int64) * 7 + 1_000_003
    items = {"item_id": np.arange(num_items, dtype=np.int32)}
    items.update({c: rng.integers(0, cards[c], num_items, dtype=np.int32) for c in ITEM_FEATURES})
    items["item_id_raw"] = items["item_id"].astype(np.int64) * 3 + 500_009
    pq.write_table(pd.DataFrame(users)[USER_COLUMNS].pipe(_to_arrow), paths.user_features)
    pq.write_table(pd.DataFrame(items)[ITEM_COLUMNS].pipe(_to_arrow), paths.item_features)
    scale = np.float32(1.0 / np.sqrt(EMBEDDING_DIM))
    item_vectors = rng.standard_normal((num_items, EMBEDDING_DIM), dtype=np.float32) * scale
    pq.write_table(_embeddings_table(items["item_id"], item_vectors, "item_id"), paths.item_embeddings)
    with pq.ParquetWriter(paths.user_embeddings, _embeddings_table(
            users["user_id"][:1], item_vectors[:1], "user_id").schema) as writer:
        for start in range(0, num_users, 250_000):
            stop = min(start + 250_000, num_users)
            vectors = rng.standard_normal((stop - start, EMBEDDING_DIM), dtype=np.float32) * scale
            writer.write_table(_embeddings_table(users["user_id"][start:stop], vectors, "user_id"))

    paths.fresh(paths.retrieval_train)
    clicks = pd.DataFrame({
        "user_id": np.repeat(users["user_id"], clicks_per_user),
        "item_id": rng.integers(0, num_items, num_users * clicks_per_user, dtype=np.int32),
    })
    clicks.to_parquet(paths.retrieval_train / "part_0.parquet", index=False)

    import merlin.io

    schema = scale_schema(cards)
    rows = rng.integers(0, num_users, train_rows)
    impressions = {c: users[c][rows] for c in USER_COLUMNS if c != "user_id_raw"}
    picked = rng.integers(0, num_items, train_rows)
    impressions.update({c: items[c][picked] for c in ITEM_COLUMNS if c != "item_id_raw"})
    impressions[TARGET] = rng.integers(0, 2, train_rows, dtype=np.int32)
    dataset = merlin.io.Dataset(pd.DataFrame(impressions), schema=schema)
    settings = ranking or RankingConfig()
    model = build_dlrm(schema, settings)
    model.fit(dataset, batch_size=settings.batch_size_rows, epochs=1, verbose=0)
    paths.fresh(paths.ranking)
    model.save(str(paths.dlrm))
    log.info("synthetic inputs: %d users x %d items in %s (%.0fs)", num_users, num_items, root,
             time.perf_counter() - started)
    return paths


def _to_arrow(frame: Any) -> Any:
    import pyarrow as pa

    return pa.Table.from_pandas(frame, preserve_index=False)


def subset_run(source: RunPaths, root: Path, num_users: int) -> RunPaths:
    """A run directory holding the first ``num_users`` users of ``source`` (same items and models)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    paths = RunPaths(root)
    paths.fresh(paths.retrieval)
    paths.fresh(paths.retrieval_train)
    users = pq.read_table(source.user_features).slice(0, num_users)
    pq.write_table(users, paths.user_features)
    pq.write_table(pq.read_table(source.user_embeddings).slice(0, num_users), paths.user_embeddings)
    clicks = pa.concat_tables(
        pq.read_table(f, columns=["user_id", "item_id"]) for f in sorted(source.retrieval_train.glob("*.parquet"))
    )
    clicks = clicks.filter(pc.is_in(clicks["user_id"], value_set=users["user_id"]))
    pq.write_table(clicks, paths.retrieval_train / "part_0.parquet")
    for name in ("item_features", "item_embeddings"):
        getattr(paths, name).symlink_to(getattr(source, name).resolve())
    if paths.ranking.exists():
        shutil.rmtree(paths.ranking)
    paths.ranking.mkdir(parents=True)
    paths.dlrm.symlink_to(source.dlrm.resolve(), target_is_directory=True)
    return paths

