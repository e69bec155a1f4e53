"""The benchmark's building blocks and a tiny end-to-end run: the speed-ups must not change any answer."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from recsys_tasks.config import StoreConfig
from recsys_tasks.scoring.stage import recommendations_schema
from recsys_tasks.store import build_document, encode_batch


def test_notebook_method_gives_the_same_lists_as_score(pipeline_run):
    """The notebook's per-user method (pandas lookups, one DLRM call per user) vs our batched stage."""
    import pandas as pd

    from recsys_tasks.bench.scoring.notebook import lists_agree, load_notebook_inputs, notebook_recommendations
    from recsys_tasks.scoring.catalog import load_catalog
    from recsys_tasks.scoring.stage import score_chunk
    from recsys_tasks.training.ranking import load_dlrm

    config, paths, _ = pipeline_run
    inputs = load_notebook_inputs(paths)
    dlrm = load_dlrm(paths.dlrm)
    # Our batched scoring in the DLRM order (blend None), the order the notebook ranks by; the published
    # lists use the blend fitted on validation (scoring/blend.py) instead.
    catalog = load_catalog(paths)
    chunk = score_chunk(catalog, dlrm, np.arange(catalog.num_users), config.scoring.top_k, config.scoring.top_n,
                        config.scoring.rank_batch_rows)
    ours = pd.DataFrame({k: list(chunk[k]) for k in ("user_id", "recommendations", "scores")}).set_index("user_id")
    rows = list(range(0, len(inputs.user_fs), max(1, len(inputs.user_fs) // 24)))
    compared = 0
    for user_id, items, scores in notebook_recommendations(
        inputs, dlrm, rows, k=config.scoring.top_k, top_n=config.scoring.top_n
    ):
        got_items = list(ours.loc[user_id, "recommendations"])
        got_scores = list(ours.loc[user_id, "scores"])
        assert lists_agree(items.tolist(), scores.tolist(), got_items, got_scores), user_id
        compared += 1
    assert compared == len(rows) >= 20


def test_lists_agree_only_forgives_ties():
    assert lists_agree_([1, 2, 3], [0.9, 0.5, 0.1], [1, 2, 3], [0.9, 0.5, 0.1])
    assert lists_agree_([1, 2, 3], [0.9, 0.5, 0.5], [1, 3, 2], [0.9, 0.5, 0.5])
    assert not lists_agree_([1, 2, 3], [0.9, 0.5, 0.1], [2, 1, 3], [0.9, 0.5, 0.1])
    assert not lists_agree_([1, 2, 3], [0.9, 0.5, 0.1], [1, 2, 4], [0.9, 0.5, 0.1])
    assert not lists_agree_([1, 2], [0.9, 0.5], [1, 2, 3], [0.9, 0.5, 0.1])


def lists_agree_(*args):
    from recsys_tasks.bench.scoring.notebook import lists_agree

    return lists_agree(*args)


def test_encoded_commands_are_what_redis_py_would_send(tmp_path):
    """Byte for byte: redis-py's own packing of JSON.SET (json.dumps of build_document) + EXPIRE."""
    rng = np.random.default_rng(5)
    edge = [0.0, 1.0, 1e-7, 4.9999e-5, 0.1234565, 0.5, 2.5e-6, 0.9999995, 0.3333333]
    rows = []
    for u in range(300):
        n = int(rng.integers(0, 6))
        scores = np.sort(rng.random(n).astype(np.float32))[::-1].tolist()
        if u < len(edge):
            scores, n = [edge[u]], 1
        rows.append({"user_id": 10**12 + u * 7, "recommendations": rng.integers(0, 2**40, n).tolist(),
                     "scores": scores, "user_id_encoded": u})
    path = tmp_path / "recs.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=recommendations_schema()), path)
    settings = StoreConfig(key_prefix="USER:", ttl_s=3600)
    fields = {"run_id": 'manual__2026-11-28T05:00:00+00:00 "quoted" é', "logical_date": "2026-11-28",
              "generated_at": "2026-11-28T05:03:12+00:00"}
    tail = ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in fields.items()) + "}"
    packer = redis.Connection()
    batches = list(pq.ParquetFile(path).iter_batches(batch_size=64, columns=["user_id", "recommendations", "scores"]))
    assert len(batches) > 1
    table = pq.read_table(path).to_pylist()
    offset = 0
    for batch in batches:
        payload, documents, _ = encode_batch(batch, settings, tail)
        expected = b""
        for row in table[offset : offset + documents]:
            key = f"USER:{row['user_id']}"
            doc = json.dumps(build_document(row["user_id"], row["recommendations"], row["scores"], **fields),
                             separators=(",", ":"))
            expected += b"".join(packer.pack_command("JSON.SET", key, "$", doc))
            expected += b"".join(packer.pack_command("EXPIRE", key, 3600))
        assert payload == expected
        offset += documents
    assert offset == len(rows)


def test_bench_runs_end_to_end_and_reports_every_figure(pipeline_run, redis_server, tmp_path):
    from recsys_tasks.bench.scoring.runner import main

    config, paths, _ = pipeline_run
    out = tmp_path / "bench.json"
    code = main([
        "--run-dir", str(paths.root), "--work-dir", str(tmp_path / "work"), "--out", str(out),
        "--redis-url", redis_server.url, "--memory-users", "50", "--notebook-users", "6", "--notebook-keys", "50",
        "--ranking-users", "50", "--retrieval-users", "100", "--redis-benchmark-requests", "5000",
        "--top-k", str(config.scoring.top_k), "--top-n", str(config.scoring.top_n), "--chunk-users", "64",
        "--rank-batch-rows", "500", "--ann-users", "60", "--large-catalog-items", "3000",
        "--large-catalog-users", "40",
    ])
    assert code == 0
    results = json.loads(out.read_text())
    users = pq.read_metadata(paths.user_features).num_rows
    scoring = results["scoring"]
    assert scoring["ours_k20"]["users"] == scoring["ours_default"]["users"] == users
    assert scoring["notebook"]["users"] == 6
    # The notebook's lists and ours at the same K agree for every compared user.
    assert scoring["agreement"] == {"users_compared": 6, "identical_lists": 6}
    figures = [
        scoring["ours_k20"]["users_per_s"], scoring["ours_default"]["users_per_s"], scoring["notebook"]["users_per_s"],
        scoring["ratio_k20"], results["ranking"]["ours_pairs_per_s"], results["ranking"]["predict_pairs_per_s"],
        results["ranking"]["fraction_of_predict"], results["retrieval"]["ours_users_per_s"],
        results["retrieval"]["plain_users_per_s"], results["retrieval"]["fraction_of_plain"],
        results["redis"]["ours_keys_per_s"], results["redis"]["notebook_keys_per_s"],
        results["redis"]["redis_benchmark"]["keys_per_s"], results["redis"]["fraction_of_redis_benchmark"],
        results["redis"]["ratio_to_notebook"], results["memory"]["small"]["peak_rss_mb"],
        results["memory"]["large"]["peak_rss_mb"], results["memory"]["ratio"], results["end_to_end"]["total_seconds"],
    ]
    approximate = results["approximate"]["by_k"][str(config.scoring.top_k)]
    large = results["large_catalog"]
    figures += [
        scoring["ours_k20_approximate"]["users_per_s"], scoring["ratio_k20_approximate"],
        results["ranking"]["whole_model_pairs_per_s"], results["retrieval"]["matmul_ceiling_users_per_s"],
        results["retrieval"]["sgemm_gflops"], approximate["exact_users_per_s"], large["exact_users_per_s"],
        *(approximate[kind]["users_per_s"] for kind in ("ivf", "hnsw")),
        *(large[kind]["users_per_s"] for kind in ("ivf", "hnsw")),
        results["ranking"]["tensorflow_pairs_per_s"],
        *(point["users_per_s"] for kind in ("ivf", "hnsw") for point in approximate[kind]["sweep"]["points"]),
    ]
    assert all(isinstance(f, int | float) and f > 0 for f in figures), figures
    assert results["ranking"]["pair_kernel"] == "numba"
    assert scoring["ours_k20"]["retrieval_kernel"] == scoring["ours_default"]["retrieval_kernel"] == "tiled"
    assert [p["value"] for p in approximate["ivf"]["sweep"]["points"]] == [16, 32, 64, 128]
    assert "ivf_probe swept" in results["markdown"] and "per-pair step in numba" in results["markdown"]
    # The split DLRM ranks exactly as the model does on the bench's sample.
    assert results["ranking"]["max_abs_difference_vs_predict"] <= 1e-5
    ranked = results["ranking"]["identical_top_lists"]
    assert ranked["identical"] == ranked["users"] == 50
    # Tiny catalogs: the indexes find (nearly) every exact candidate, and the final lists follow.
    assert scoring["ours_k20_approximate"]["overlap_with_exact"]["mean_overlap"] >= 0.95
    for kind in ("ivf", "hnsw"):
        assert approximate[kind]["candidate_recall"] >= 0.9 and approximate[kind]["top_n_overlap"] >= 0.9
        assert large[kind]["candidate_recall"] >= 0.8
    assert results["inputs"]["loadavg_start"] and "Load average" in results["markdown"]
    assert results["memory"]["small"]["users"] == 50
    assert results["markdown"].startswith("| measure |") and "redis-benchmark" in results["markdown"]
    # The benchmark cleans up after itself and never touched the run it measured.
    assert not list(redis.Redis.from_url(redis_server.url).scan_iter("BENCH:*"))
    assert pq.read_table(paths.recommendations).num_rows == users


@pytest.mark.parametrize("kernel", ["tiled", "tensorflow"])
@pytest.mark.parametrize("ties", [False, True])
def test_retrieve_equals_masking_then_top_k(ties, kernel):
    """Both retrieval kernels give exactly the top-k of the scores with seen items set to -inf."""
    import tensorflow as tf

    from recsys_tasks.scoring.candidates import retrieve
    from recsys_tasks.scoring.catalog import Catalog, seen_csr

    rng = np.random.default_rng(11)
    users, items, k = 40, 5000, 10  # 5000 items: several tiles of the CPU kernel, the last one partial
    user_emb = rng.standard_normal((users, 8)).astype(np.float32)
    item_emb = rng.standard_normal((items, 8)).astype(np.float32)
    if ties:
        user_emb, item_emb = np.round(user_emb), np.round(item_emb)
    clicks = [(u, int(i)) for u in range(users) for i in rng.integers(0, items, int(rng.integers(0, 4)))]
    clicks += [(3, i) for i in range(0, 50)]  # a heavy clicker (more seen items than k)
    clicks += [(5, i) for i in range(items - 4)]  # fewer unseen items than k
    user_rows, item_rows = np.array(clicks).T
    indptr, seen_items = seen_csr(user_rows, item_rows, users)
    catalog = Catalog({}, {}, user_emb, item_emb, indptr, seen_items)
    for chunk in (np.arange(0, 20), np.arange(20, 40), np.arange(0, 3), np.array([7, 3, 5, 1])):
        # The reference: the same matrix product, seen items set to -inf, plain top-k.
        masked = tf.matmul(user_emb[chunk], item_emb, transpose_b=True).numpy()
        for position, user in enumerate(chunk):
            masked[position, item_rows[user_rows == user]] = -np.inf
        expected_scores, expected_rows = (t.numpy() for t in tf.math.top_k(masked, k=k))
        rows, scores = retrieve(catalog, chunk, k, kernel)
        finite = np.isfinite(expected_scores)
        np.testing.assert_array_equal(rows[finite], expected_rows[finite])
        # The kernels' matrix products may round differently in the last bit (integer scores: exact).
        np.testing.assert_allclose(scores[finite], expected_scores[finite], rtol=0 if ties else 1e-6)
        assert (rows[~finite] == -1).all() and np.isneginf(scores[~finite]).all()
    assert np.isneginf(retrieve(catalog, np.array([5]), k, kernel)[1]).sum() == k - 4
    assert len(retrieve(catalog, np.array([], dtype=np.int64), k, kernel)[0]) == 0


def test_tiled_kernel_is_the_cpu_default():
    from recsys_tasks.scoring.candidates import retrieval_kernel

    assert retrieval_kernel("auto") == "tiled"  # no GPU on this machine
    assert retrieval_kernel("tensorflow") == "tensorflow"


def test_tiled_kernel_does_not_depend_on_tile_sizes():
    """Users split across thread tasks and items across tiles (last ones partial) change nothing."""
    from recsys_tasks.scoring.kernels.topk import pack_items, top_k_unseen

    rng = np.random.default_rng(4)
    queries = rng.standard_normal((37, 16)).astype(np.float32)
    items = np.round(rng.standard_normal((3001, 16)), 1).astype(np.float32)
    indptr = np.arange(0, 2 * 37 + 1, 2, dtype=np.int64)
    seen = np.sort(rng.integers(0, 3001, (37, 2)), axis=1).reshape(-1).astype(np.int64)
    results = [
        top_k_unseen(queries, pack_items(items, item_tile), len(items), 25, indptr, seen, np.arange(37), user_tile)
        for item_tile, user_tile in ((1024, 512), (100, 5), (3001, 1), (64, 37))
    ]
    for rows, scores in results[1:]:
        np.testing.assert_array_equal(rows, results[0][0])
        np.testing.assert_allclose(scores, results[0][1], rtol=1e-6)
    assert not any(np.isin(row, user_seen).any() for row, user_seen in zip(results[0][0], seen.reshape(37, 2)))
