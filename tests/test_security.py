"""Credentials from the Airflow connection, end to end: password, least-privilege ACL user, TLS.

The load runs through the DAG's own glue (``plugins/recsys_airflow.run_stage``), which builds the
client with Airflow's ``RedisHook`` from ``AIRFLOW_CONN_REDIS_RECS``. Every secret is a random token,
and the test checks it appears in no log line, output, XCom (the returned summary), summary file or
Redis value.
"""

from __future__ import annotations

import json
import logging
import secrets
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest
import redis
from conftest import REPO

# Airflow reconfigures logging when it is first imported, closing the handlers present at that time;
# importing it while the test session is collected keeps it from closing pytest's own capture
# streams later (for instance after TensorFlow has installed its handler during an earlier test).
import airflow.providers.redis.hooks.redis  # noqa: E402, F401  isort: skip

from conftest import finish_scored_run

from recsys_tasks.ops.local_redis import LocalRedis, free_port, throwaway_tls
from recsys_tasks.paths import RunPaths, run_dir_for
from recsys_tasks.runtime import write_summary
from recsys_tasks.scoring.stage import recommendations_schema

DAG_ID = "offline_batch_recsys"
RUN_ID = "scheduled__2026-12-03T00:00:00+00:00"
LEAST_PRIVILEGE = ["resetkeys", "~USER:*", "~RECSYS:*", "resetchannels", "-@all", "+@read", "+@write",
                   "+@scripting", "+@connection", "-@dangerous", "+json.set", "+json.get", "+info"]


@pytest.fixture(scope="module")
def admin_password():
    return "admin-" + secrets.token_hex(12)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    return throwaway_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def secured_redis(tmp_path_factory, admin_password):
    server = LocalRedis(free_port(), tmp_path_factory.mktemp("secured_redis"), password=admin_password).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory, admin_password, tls_files):
    server = LocalRedis(free_port(), tmp_path_factory.mktemp("tls_redis"), password=admin_password,
                        tls=tls_files).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def recsys_airflow():
    with pytest.MonkeyPatch.context() as patch:  # sys.path as it was once this module's tests are done
        patch.syspath_prepend(str(REPO / "plugins"))
        import recsys_airflow

        yield recsys_airflow


@pytest.fixture
def scored_run(tmp_path, monkeypatch):
    """A run directory, where the DAG's load task looks for it, holding what 'score' leaves behind."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "artifacts"
    monkeypatch.setenv("RECSYS__ARTIFACT_ROOT", str(root))
    monkeypatch.delenv("RECSYS_CONFIG", raising=False)
    paths = RunPaths(run_dir_for(root, DAG_ID, RUN_ID))
    paths.recommendations.mkdir(parents=True)
    rows = [{"user_id": u, "recommendations": [u, u + 1], "scores": [0.5, 0.25], "user_id_encoded": u}
            for u in range(40)]
    pq.write_table(pa.Table.from_pylist(rows, schema=recommendations_schema()), paths.recommendation_part(0))
    write_summary(paths, "score", {"stage": "score", "generated_at": "2026-12-03T01:00:00+00:00"})
    finish_scored_run(paths)
    return paths


def connection(monkeypatch, port, *, login=None, password=None, extra=None):
    conn = {"conn_type": "redis", "host": "127.0.0.1", "port": port, "login": login, "password": password,
            "extra": extra or {}}
    monkeypatch.setenv("AIRFLOW_CONN_REDIS_RECS", json.dumps(conn))


def run_load(recsys_airflow):
    context = {"params": {}, "dag": SimpleNamespace(dag_id=DAG_ID), "run_id": RUN_ID,
               "logical_date": datetime(2026, 12, 3, tzinfo=timezone.utc)}
    return recsys_airflow.run_stage("load_redis", context)


def assert_published_without_leaking(summary, paths, admin, secret, caplog, capsys):
    assert summary["published"] and summary["users"] == 40
    assert json.loads(admin.execute_command("JSON.GET", "RECSYS:MANIFEST"))["run_id"] == RUN_ID
    assert json.loads(admin.execute_command("JSON.GET", "USER:7"))["recommendations"] == [7, 8]
    out, err = capsys.readouterr()
    places = {"xcom": json.dumps(summary), "log": caplog.text, "stdout": out, "stderr": err}
    places.update({str(p): p.read_text() for p in paths.root.rglob("*.json")})
    places.update({k.decode(): str(admin.dump(k)) for k in admin.scan_iter()})
    for where, text in places.items():
        assert secret not in text, f"the secret leaked into {where}"


def test_password_from_the_connection(recsys_airflow, secured_redis, scored_run, admin_password, monkeypatch,
                                      caplog, capsys):
    admin = secured_redis.client()
    admin.flushdb()
    connection(monkeypatch, secured_redis.port, password=admin_password)
    with caplog.at_level(logging.DEBUG):
        summary = run_load(recsys_airflow)
    assert_published_without_leaking(summary, scored_run, admin, admin_password, caplog, capsys)


def test_least_privilege_acl_user_from_the_connection(recsys_airflow, secured_redis, scored_run, monkeypatch,
                                                      caplog, capsys):
    admin = secured_redis.client()
    admin.flushdb()
    admin.set("OTHER:1", "an application's key")
    user_password = "user-" + secrets.token_hex(12)
    admin.execute_command("ACL", "SETUSER", "recsys", "on", f">{user_password}", *LEAST_PRIVILEGE)
    connection(monkeypatch, secured_redis.port, login="recsys", password=user_password)
    with caplog.at_level(logging.DEBUG):
        summary = run_load(recsys_airflow)
    assert_published_without_leaking(summary, scored_run, admin, user_password, caplog, capsys)
    # The ACL itself keeps the job inside its own keys.
    user = redis.Redis(port=secured_redis.port, username="recsys", password=user_password)
    with pytest.raises(redis.exceptions.NoPermissionError):
        user.set("OTHER:1", "overwritten")
    assert admin.get("OTHER:1") == b"an application's key"


def test_tls_from_the_connection_extras(recsys_airflow, tls_redis, tls_files, scored_run, admin_password,
                                        monkeypatch, caplog, capsys):
    admin = tls_redis.client()
    admin.flushdb()
    connection(monkeypatch, tls_redis.port, password=admin_password,
               extra={"ssl": True, "ssl_ca_certs": str(tls_files.ca), "ssl_cert_reqs": "required"})
    with caplog.at_level(logging.DEBUG):
        summary = run_load(recsys_airflow)
    assert_published_without_leaking(summary, scored_run, admin, admin_password, caplog, capsys)
    # The server speaks only TLS: a plain-text client cannot reach it.
    with pytest.raises(redis.ConnectionError):
        redis.Redis(port=tls_redis.port, password=admin_password, socket_timeout=2, retry=None).ping()


def test_wrong_password_fails_at_once_and_writes_nothing(recsys_airflow, secured_redis, scored_run, monkeypatch,
                                                         caplog):
    admin = secured_redis.client()
    admin.flushdb()
    wrong = "wrong-" + secrets.token_hex(12)
    connection(monkeypatch, secured_redis.port, password=wrong)
    with caplog.at_level(logging.DEBUG), pytest.raises(redis.AuthenticationError) as failure:
        run_load(recsys_airflow)
    assert wrong not in str(failure.value) and wrong not in caplog.text
    assert "retrying in" not in caplog.text  # a refused password is not a transient fault
    assert admin.dbsize() == 0
    assert not scored_run.summary("load_redis").exists()
