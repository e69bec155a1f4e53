"""Compose and the native stack cannot drift: docker-compose.yaml (production) and scripts/stack.sh (run
here by test_stack.py) start the same commands on the same queue, configure Airflow with the same variable
names from the same .env names, and install the workers from the same pins. Static: text and YAML only."""

from __future__ import annotations

import re
import shlex

import pytest
import yaml
from conftest import REPO
from test_deploy import command_words, pinned

STACK = (REPO / "scripts" / "stack.sh").read_text()
# The one deliberate difference: compose logs in through FAB, the native stack through Airflow's simple auth
# manager (no FAB provider in the pinned set); both are configured by AIRFLOW_ADMIN_USERNAME/PASSWORD.
COMPOSE_ONLY = {"AIRFLOW__CORE__AUTH_MANAGER"}
# .env.example names that only make sense for containers (file ownership on volumes, a GPU index).
HOST_ONLY = {"AIRFLOW_UID", "GPU_WORKER_DEVICE"}
# Native only: on one machine the api-server reads task logs from the shared AIRFLOW_HOME/logs, so the
# workers and the triggerer open no log server (it would listen on every interface: Airflow has no host
# setting for it). In compose each container serves its own logs on the compose network.
NATIVE_ONLY_FLAGS = {"--skip-serve-logs"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yaml").read_text())


def stack_assignments() -> dict[str, str]:
    """NAME=value lines stack.sh writes into stack.env (the heredocs and the echo lines)."""
    found = {}
    for line in STACK.splitlines():
        match = re.match(r'^\s*(?:echo ")?([A-Z][A-Z0-9_]*)=(.*?)"?$', line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def env_example_names() -> set[str]:
    return {line.split("=", 1)[0] for line in (REPO / ".env.example").read_text().splitlines()
            if line and not line.startswith("#") and "=" in line}


def referenced(value: str, names: set[str]) -> set[str]:
    return set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", str(value))) & names


def stack_commands() -> dict[str, list[str]]:
    """`start NAME ... <venv>/bin/airflow ARGS` lines of stack.sh -> the Airflow arguments per service
    (without the native-only flags)."""
    commands = {}
    text = STACK.replace("\\\n", " ")
    for line in text.splitlines():
        match = re.match(r'\s*(?:[a-z0-9*|-]+\)\s*)?start "?([a-z0-9$-]+)"? (.*?)(?:\s*;;)?$', line)
        if match and "/bin/airflow" in match.group(2):
            words = shlex.split(match.group(2))
            index = next(i for i, w in enumerate(words) if w.endswith("/bin/airflow"))
            commands[match.group(1)] = [w for w in words[index:] if w not in NATIVE_ONLY_FLAGS]
    return commands


def test_same_airflow_variables_from_the_same_env_names(compose):
    common = compose["x-airflow-common"]["environment"]
    stack = stack_assignments()
    names = env_example_names()
    assert set(common) - COMPOSE_ONLY <= set(stack), set(common) - COMPOSE_ONLY - set(stack)
    for key in set(common) - COMPOSE_ONLY:
        assert referenced(common[key], names) == referenced(stack[key], names), key
    for key in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CELERY__RESULT_BACKEND", "AIRFLOW__CELERY__BROKER_URL",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL"):
        assert common[key].split("://")[0] == stack[key].split("://")[0], key
    same_values = ("AIRFLOW__CORE__EXECUTOR", "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION",
                   "AIRFLOW__CORE__LOAD_EXAMPLES", "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT")
    for key in same_values:
        assert str(common[key]).lower() == stack[key].lower(), key
    # Every .env name a container needs is one the native stack sets as well.
    assert (names - HOST_ONLY) <= set(stack), (names - HOST_ONLY) - set(stack)


def test_same_commands_and_queue(compose):
    services = compose["services"]
    stack = stack_commands()
    for service in ("api-server", "scheduler", "dag-processor", "triggerer"):
        assert stack[service][1:] == command_words(services[f"airflow-{service}"] if service != "api-server"
                                                   else services["airflow-apiserver"]), service
    # Native only: two processes on a developer machine (compose keeps Airflow's worker_concurrency, 16).
    assert stack["default-worker"][1:] == command_words(services["airflow-worker"]) + [
        "--concurrency", "2", "--celery-hostname", "default-worker@%h"]
    worker = stack["gpu-worker-$i"]
    assert ".venv-gpu-worker" in STACK and worker[0] == "$GPU_VENV/bin/airflow"
    compose_worker = command_words(services["gpu-worker"])
    assert worker[1:] == compose_worker[1:] + ["--celery-hostname", "gpu-worker-$i@%h"]
    dockerfile_cmd = re.search(r"^CMD (.*)$", (REPO / "Dockerfile.gpu-worker").read_text(), re.M).group(1)
    assert yaml.safe_load(dockerfile_cmd) == compose_worker
    dag = (REPO / "dags" / "offline_batch_recsys.py").read_text()
    assert '"queue": "gpu"' in dag and '"pool": "gpu"' in dag
    assert compose_worker[compose_worker.index("-q") + 1] == "gpu"


def test_same_init_pool_and_connection(compose):
    init = compose["services"]["airflow-init"]["command"][-1]
    assert 'airflow pools set gpu "${GPU_COUNT:-1}"' in init and 'pools set gpu "$GPU_COUNT"' in STACK
    assert stack_assignments()["GPU_COUNT"] == "$GPU_WORKERS"  # one slot per GPU worker
    assert "connections add redis_recs --conn-type redis" in init
    assert "connections add redis_recs --conn-type redis" in STACK
    assert "check_airflow_secrets.py" in init and "check_airflow_secrets.py" in STACK


def test_same_pins():
    # The Airflow services of both run the pinned Airflow; both worker kinds install from one definition.
    airflow = pinned("constraints.txt", "apache-airflow")
    assert pinned("constraints-gpu-worker.txt", "apache-airflow") == airflow
    venv = (REPO / "scripts" / "gpu_worker_venv.sh").read_text()
    assert "scripts/install_gpu_worker.sh deps" in venv and "cp constraints-gpu-worker.txt" in venv
    assert "bash install_gpu_worker.sh deps" in (REPO / "Dockerfile.gpu-worker").read_text()
    # What the scheduler (main venv) and the workers (GPU venv) must agree on: Celery, its transport, the
    # broker client and the database drivers.
    for package in ("celery", "kombu", "redis", "psycopg2-binary", "asyncpg", "flower"):
        assert pinned("constraints.txt", package) == pinned("constraints-gpu-worker.txt", package), package
