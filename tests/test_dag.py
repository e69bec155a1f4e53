"""The DAG: integrity (parse, structure, cheap imports, timeouts) and the data seed per logical date."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO

DAG_ID = "offline_batch_recsys"
HEAVY = ("tensorflow", "merlin", "nvtabular", "cudf")


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory):
    home = tmp_path_factory.mktemp("airflow_home")
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
    }
    return env


@pytest.fixture(scope="module")
def dag(airflow_env):
    """The parsed DAG; the Airflow variables and the plugins path are set only while this module runs."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in airflow_env.items():
            if key.startswith("AIRFLOW"):
                patch.setenv(key, value)
        patch.syspath_prepend(str(REPO / "plugins"))
        from airflow.dag_processing.dagbag import DagBag

        bag = DagBag(dag_folder=str(REPO / "dags"))
        assert bag.import_errors == {}
        yield bag.dags[DAG_ID]


def test_dag_shape(dag):
    assert dag is not None
    # @daily with data intervals: the run at 00:00 UTC on D+1 has logical date D (its partitions end at D).
    assert type(dag.timetable).__name__ == "CronDataIntervalTimetable"
    assert dag.timetable.expression == "0 0 * * *"
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    assert dag.doc_md and "load_redis" in dag.doc_md
    tasks = {t.task_id: t for t in dag.tasks}
    assert set(tasks) == {
        "generate_data", "transform", "fit_retrieval", "fit_ranking", "plan_scoring", "score", "collect_scores",
        "evaluate", "load_redis", "prune_runs",
    }
    upstream = {tid: set(t.upstream_task_ids) for tid, t in tasks.items()}
    assert upstream == {
        "generate_data": set(),
        "transform": {"generate_data"},
        "fit_retrieval": {"transform"},
        "fit_ranking": {"transform"},
        "plan_scoring": {"fit_retrieval", "fit_ranking"},
        "score": {"plan_scoring"},
        "collect_scores": {"score"},
        "evaluate": {"collect_scores"},
        "load_redis": {"evaluate"},
        "prune_runs": {"load_redis"},
    }
    # load_redis announces each publish on an Asset; retention is a teardown (runs after failures too,
    # and does not decide the run's state).
    assert [a.uri for a in tasks["load_redis"].outlets] == ["redis://redis-recs/offline_batch_recsys/recommendations"]
    assert tasks["prune_runs"].is_teardown
    # score is mapped over the shard indices plan_scoring returns; the others are plain tasks.
    assert tasks["score"].is_mapped and not tasks["collect_scores"].is_mapped
    assert tasks["collect_scores"].trigger_rule == "all_success"
    for task in tasks.values():
        assert task.queue == "gpu" and task.pool == "gpu", task.task_id
        assert task.retries >= 1 and task.retry_delay.total_seconds() > 0, task.task_id
        assert task.execution_timeout is not None and task.execution_timeout.total_seconds() > 0, task.task_id
    for key in ("data.num_rows", "scoring.top_k", "scoring.top_n", "scoring.num_shards", "retrieval.epochs",
                "ranking.epochs"):
        assert key in dag.params


def test_summaries_travel_whole_as_one_xcom(dag):
    """No task splits its summary into one XCom per key (Airflow infers that from a ``dict`` annotation)."""
    assert {t.task_id: t.multiple_outputs for t in dag.tasks} == {t.task_id: False for t in dag.tasks}


def test_every_param_is_a_config_key(dag):
    from recsys_tasks.config import Config

    defaults = Config().to_dict()
    # Each key with its default value: an unknown key is refused whatever its value.
    Config().with_overrides({key: defaults[key.split(".")[0]][key.split(".")[1]] for key in dag.params})


def test_parsing_the_dag_imports_nothing_heavy(airflow_env):
    code = (
        f"import sys, runpy; sys.path.insert(0, {str(REPO / 'plugins')!r}); "
        f"runpy.run_path({str(REPO / 'dags' / 'offline_batch_recsys.py')!r}); "
        f"print(','.join(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=airflow_env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_recsys_tasks_never_imports_airflow():
    code = (
        "import sys, recsys_tasks.cli, recsys_tasks.store, recsys_tasks.scoring.stage, recsys_tasks.config; "
        "print([m for m in sys.modules if m.split('.')[0] == 'airflow'])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


# The end-to-end run of the DAG (a triggered run and a three-date backfill on a real scheduler with Celery
# workers, mapped shard instances and their labels, run directories, Redis serving the newest date) is
# tests/test_stack.py.


def test_data_seed_follows_the_logical_date_unless_pinned(monkeypatch):
    import pendulum

    monkeypatch.syspath_prepend(str(REPO / "plugins"))
    monkeypatch.delenv("RECSYS__DATA__SEED", raising=False)
    from recsys_airflow import task_config

    day = pendulum.datetime(2026, 11, 20, tz="UTC")
    assert task_config({"params": {}, "logical_date": day}).data.seed == 42 + 20261120
    assert task_config({"params": {}, "logical_date": day.add(days=1)}).data.seed == 42 + 20261121
    assert task_config({"params": {"data.seed": 7}, "logical_date": day}).data.seed == 7
    assert task_config({"params": {}, "logical_date": None}).data.seed == 42
