"""RedisJSON load and fetch against a real Redis with the RedisJSON module."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from recsys_tasks.config import StoreConfig
from recsys_tasks.runtime import InputDataError
from recsys_tasks.scoring.stage import recommendations_schema
from recsys_tasks.store import fetch, publish, read_manifest

SETTINGS = StoreConfig(pipeline_chunk_keys=20, ttl_s=3600)


def write_recs(path, rows):
    table = pa.Table.from_pylist(
        [{"user_id_encoded": i, **row} for i, row in enumerate(rows)], schema=recommendations_schema()
    )
    pq.write_table(table, path)
    return path


def sample_rows(count):
    return [
        {"user_id": 1000 + u, "recommendations": [u, u + 1, u + 2], "scores": [0.9, 0.5, 0.25]} for u in range(count)
    ]


class CountingConnection(redis.Connection):
    """A real connection that also counts the writes (round trips) it sends."""

    document_sends = 0

    def send_packed_command(self, command, *args, **kwargs):
        payload = b"".join(bytes(part) for part in (command if isinstance(command, list) else [command]))
        # A chunk of documents: JSON.SET + EXPIRE per row, or the fenced write (EVALSHA per node and chunk).
        if (payload.startswith(b"*4\r\n$8\r\nJSON.SET\r\n$") or b"\r\n$7\r\nEVALSHA\r\n" in payload[:20]) \
                and b"USER:" in payload[:120]:
            CountingConnection.document_sends += 1
        return super().send_packed_command(command, *args, **kwargs)


def test_publish_writes_notebook_documents_with_ttl_and_manifest(tmp_path, redis_client, redis_server):
    path = write_recs(tmp_path / "recs.parquet", sample_rows(50))
    client = redis.Redis.from_url(redis_server.url, connection_class=CountingConnection)
    client.ping()  # connect first: the handshake's commands are not part of the load
    CountingConnection.document_sends = 0
    summary = publish(client, path, SETTINGS, run_id="run-1", logical_date="2026-11-28T00:00:00+00:00",
                      generated_at="2026-11-28T01:00:00+00:00")
    assert summary["users"] == 50
    # 50 documents in chunks of 20: 3 sends of documents, not one round trip per key.
    assert CountingConnection.document_sends == 3

    doc = fetch(redis_client, 1007, SETTINGS)
    assert doc == {
        "user_id": 1007,
        "recommendations": [7, 8, 9],
        "scores": [0.9, 0.5, 0.25],
        "run_id": "run-1",
        "logical_date": "2026-11-28T00:00:00+00:00",
        "generated_at": "2026-11-28T01:00:00+00:00",
    }
    raw = redis_client.execute_command("JSON.GET", "USER:1007", "$.recommendations")
    assert raw == b"[[7,8,9]]"
    assert 0 < redis_client.ttl("USER:1007") <= 3600
    assert all(redis_client.ttl(k) > 0 for k in redis_client.scan_iter("USER:*"))
    manifest = read_manifest(redis_client, SETTINGS)
    assert manifest["run_id"] == "run-1" and manifest["users"] == 50
    assert fetch(redis_client, 424242, SETTINGS) is None


@pytest.mark.parametrize(
    "rows, message",
    [
        ([], "no users to publish"),
        ([{"user_id": 1, "recommendations": [1], "scores": [0.5]}] * 2, "holds user 1 twice"),
        ([{"user_id": 1, "recommendations": [1, 2], "scores": [0.5]}], "user 1 has 2 recommendations but 1 scores"),
        ([{"user_id": -3, "recommendations": [1], "scores": [0.5]}], "invalid id -3"),
    ],
)
def test_bad_recommendations_publish_nothing(tmp_path, redis_client, rows, message):
    redis_client.execute_command("JSON.SET", "USER:1", "$", '{"user_id":1,"recommendations":[9]}')
    before = redis_client.execute_command("JSON.GET", "USER:1")
    path = write_recs(tmp_path / "recs.parquet", rows)
    with pytest.raises(InputDataError, match=message):
        publish(redis_client, path, SETTINGS, run_id="bad", logical_date="", generated_at="")
    assert redis_client.execute_command("JSON.GET", "USER:1") == before
    assert redis_client.dbsize() == 1


def test_missing_column_and_corrupt_file_are_named(tmp_path, redis_client):
    missing = tmp_path / "missing.parquet"
    pq.write_table(pa.table({"user_id": [1]}), missing)
    with pytest.raises(InputDataError, match=r"missing.parquet: missing column\(s\) \['recommendations', 'scores'\]"):
        publish(redis_client, missing, SETTINGS, run_id="x", logical_date="", generated_at="")
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(InputDataError, match="corrupt.parquet: not a readable parquet file"):
        publish(redis_client, corrupt, SETTINGS, run_id="x", logical_date="", generated_at="")
    assert redis_client.dbsize() == 0


def test_publish_reads_every_part_of_a_recommendations_directory(tmp_path, redis_client):
    parts = tmp_path / "recommendations"
    parts.mkdir()
    rows = sample_rows(30)
    write_recs(parts / "part-00000.parquet", rows[:10])
    write_recs(parts / "part-00001.parquet", rows[10:])
    summary = publish(redis_client, parts, SETTINGS, run_id="r", logical_date="", generated_at="")
    assert summary["users"] == 30
    assert fetch(redis_client, 1029, SETTINGS)["recommendations"] == [29, 30, 31]


def test_duplicate_user_across_parts_is_refused(tmp_path, redis_client):
    parts = tmp_path / "recommendations"
    parts.mkdir()
    write_recs(parts / "part-00000.parquet", sample_rows(3))
    write_recs(parts / "part-00001.parquet", sample_rows(1))
    with pytest.raises(InputDataError, match="holds user 1000 twice"):
        publish(redis_client, parts, SETTINGS, run_id="r", logical_date="", generated_at="")
    assert redis_client.dbsize() == 0


def test_score_spelling_table_matches_python_for_every_micro_value():
    """The table the loader spells scores with (built with numpy) holds ``repr(m / 1e6)`` for every m."""
    from recsys_tasks.store.keys import _micro_spellings

    matrix, lengths = _micro_spellings()
    assert len(matrix) == len(lengths) == 1_000_001
    table = matrix.tobytes()
    width = matrix.shape[1]
    mismatched = [m for m in range(1_000_001)
                  if table[m * width : m * width + int(lengths[m])] != repr(m / 1e6).encode()]
    assert mismatched == []
