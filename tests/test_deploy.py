"""Static checks of the production stack (there is no Docker engine here): docker-compose.yaml,
Dockerfile.gpu-worker and their pins, read with PyYAML and plain text parsing."""

from __future__ import annotations

import re
import shlex

import pytest
import yaml
from conftest import REPO

AIRFLOW_SERVICES = {
    "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer", "airflow-worker",
    "airflow-init", "gpu-worker",
}
LONG_RUNNING = {"postgres", "redis", "redis-recs"} | (AIRFLOW_SERVICES - {"airflow-init"})


def pinned(path, package: str) -> str:
    for line in (REPO / path).read_text().splitlines():
        name, sep, version = line.partition("==")
        if sep and name.strip().lower() == package:
            return version.strip()
    raise AssertionError(f"{package} is not pinned in {path}")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yaml").read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def command_words(service: dict) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def test_every_service_the_stack_needs_is_there(services):
    assert AIRFLOW_SERVICES | {"postgres", "redis", "redis-recs"} <= set(services)
    assert services["postgres"]["image"].startswith("postgres:")
    assert command_words(services["airflow-apiserver"]) == ["api-server"]
    assert command_words(services["airflow-scheduler"]) == ["scheduler"]
    assert command_words(services["airflow-dag-processor"]) == ["dag-processor"]
    assert command_words(services["airflow-triggerer"]) == ["triggerer"]
    # The CPU worker serves the default queue: no -q, so Celery's default (Airflow's "default").
    assert command_words(services["airflow-worker"]) == ["celery", "worker"]


def test_all_airflow_services_share_one_version_and_environment(compose, services):
    airflow_version = pinned("constraints.txt", "apache-airflow")
    common = compose["x-airflow-common"]
    assert common["image"] == f"apache/airflow:{airflow_version}"
    for name in AIRFLOW_SERVICES:
        service = services[name]
        env = service["environment"]
        # YAML merge keys: each service starts from the one common environment.
        assert {k: env[k] for k in common["environment"]} == common["environment"], name
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        # airflow-init also mounts the secrets check it runs first.
        assert service["volumes"][: len(common["volumes"])] == common["volumes"], name
        if name == "gpu-worker":
            assert service["build"]["args"]["AIRFLOW_VERSION"] == airflow_version
            assert service["build"]["dockerfile"] == "Dockerfile.gpu-worker"
        else:
            assert service["image"] == common["image"], name
    artifacts = [v for v in common["volumes"] if v.endswith(":" + common["environment"]["RECSYS__ARTIFACT_ROOT"])]
    assert len(artifacts) == 1 and artifacts[0].split(":")[0] in compose["volumes"]


def test_gpu_worker_reserves_an_nvidia_gpu_and_consumes_only_the_gpu_queue(services):
    worker = services["gpu-worker"]
    words = command_words(worker)
    assert words[:3] == ["airflow", "celery", "worker"]
    queues = words[words.index("-q") + 1]
    assert queues == "gpu"
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1
    assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]
    assert "device_ids" in devices[0] or "count" in devices[0]


def test_the_recommendations_store_is_redisjson_and_not_the_broker(compose, services):
    env = compose["x-airflow-common"]["environment"]
    broker_host = re.match(r"redis://[^@]*@([^:/]+)", env["AIRFLOW__CELERY__BROKER_URL"]).group(1)
    assert broker_host == "redis"
    store = services["redis-recs"]
    assert store["image"].startswith("redis/redis-stack-server:")
    assert store["image"] != services[broker_host]["image"]
    assert store["volumes"] != services[broker_host].get("volumes")
    init_script = services["airflow-init"]["command"][-1]
    assert "connections add redis_recs" in init_script and "--conn-host redis-recs" in init_script
    assert "--conn-host redis " not in init_script


def test_init_migrates_creates_admin_pool_and_connection(services):
    init = services["airflow-init"]
    script = init["command"][-1]
    assert init["environment"]["_AIRFLOW_DB_MIGRATE"] == "true"
    assert init["environment"]["_AIRFLOW_WWW_USER_CREATE"] == "true"
    assert 'airflow pools set gpu "${GPU_COUNT:-1}"' in script
    for name in AIRFLOW_SERVICES - {"airflow-init"}:
        assert services[name]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully", name


def test_every_long_running_service_has_a_healthcheck(services):
    for name in LONG_RUNNING:
        check = services[name].get("healthcheck")
        assert check and check["test"][0] in ("CMD", "CMD-SHELL"), name


def test_secrets_come_from_an_uncommitted_env_file():
    text = (REPO / "docker-compose.yaml").read_text()
    for secret in ("POSTGRES_PASSWORD", "BROKER_PASSWORD", "REDIS_RECS_PASSWORD", "AIRFLOW_ADMIN_PASSWORD",
                   "AIRFLOW_FERNET_KEY", "AIRFLOW_JWT_SECRET", "AIRFLOW_API_SECRET_KEY"):
        assert f"${{{secret}:?" in text, f"{secret} must be required from .env"
    example = dict(
        line.split("=", 1) for line in (REPO / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    # Compose substitutes ${VAR}; $${VAR} is left for the container's shell.
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    used = set(re.findall(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)", code))
    assert used <= set(example), used - set(example)
    assert ".env" in (REPO / ".gitignore").read_text().splitlines()


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (REPO / "Dockerfile.gpu-worker").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_dockerfile_builds_on_merlin_tensorflow_with_the_stacks_airflow():
    instructions = dockerfile_instructions()
    args = {v.split("=", 1)[0]: v.split("=", 1)[1] for k, v in instructions if k == "ARG" and "=" in v}
    merlin = pinned("constraints.txt", "merlin-models")  # 23.8.0 -> the 23.08 image
    year, month, _ = merlin.split(".")
    assert args["MERLIN_IMAGE"] == f"nvcr.io/nvidia/merlin/merlin-tensorflow:{year}.{int(month):02d}"
    assert [v for k, v in instructions if k == "FROM"] == ["${MERLIN_IMAGE}"]
    assert args["AIRFLOW_VERSION"] == pinned("constraints.txt", "apache-airflow")
    for package in ("apache-airflow", "apache-airflow-core", "apache-airflow-task-sdk"):
        assert pinned("constraints-gpu-worker.txt", package) == pinned("constraints.txt", package), package
    runs = [v for k, v in instructions if k == "RUN"]
    # The install step is one script, run for the dependencies and then for this package.
    assert "bash install_gpu_worker.sh deps python3 /opt/recsys" in runs
    assert "bash install_gpu_worker.sh package python3 /opt/recsys" in runs
    script = (REPO / "scripts" / "install_gpu_worker.sh").read_text()
    assert '"apache-airflow[celery]==${AIRFLOW_VERSION}"' in script
    assert '-c "$pins" -c "$SRC/constraints-gpu-worker.txt"' in script
    assert '--no-deps "$SRC"' in script  # TensorFlow/Merlin are never reinstalled from PyPI
    for driver in ("psycopg2-binary", "asyncpg"):
        assert driver in script and pinned("constraints-gpu-worker.txt", driver), driver
    cmd = [v for k, v in instructions if k == "CMD"]
    assert cmd == ['["airflow", "celery", "worker", "-q", "gpu", "--concurrency", "1"]']
    assert [v for k, v in instructions if k == "ENTRYPOINT"] == ['["/opt/nvidia/nvidia_entrypoint.sh"]']
    assert any(k == "HEALTHCHECK" for k, _ in instructions)
    assert any(k == "USER" for k, _ in instructions)


def test_dockerfile_copies_only_what_exists():
    for kind, value in dockerfile_instructions():
        if kind == "COPY":
            *sources, _ = value.split()
            for source in sources:
                assert (REPO / source).exists(), source
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    assert ".venv" in ignored and "artifacts" in ignored and ".env" in ignored


def test_the_local_gpu_worker_venv_runs_the_dockerfiles_install_step():
    """scripts/gpu_worker_venv.sh = the image's Python layer (mirror) + the same two install_gpu_worker.sh steps."""
    venv = (REPO / "scripts" / "gpu_worker_venv.sh").read_text()
    assert "-c constraints-merlin-23.08.txt" in venv
    assert 'scripts/install_gpu_worker.sh deps "$VENV/bin/python"' in venv
    assert 'scripts/install_gpu_worker.sh package "$VENV/bin/python" "$PWD"' in venv
    assert "3.10" in venv
    mirror = REPO / "constraints-merlin-23.08.txt"
    assert "NVIDIA-Merlin/Merlin" in mirror.read_text() and "v23.08.00" in mirror.read_text()
    image = {"tensorflow": "2.12.0", "numpy": "1.22.4", "pandas": "1.5.2", "dask": "2023.1.1",
             "distributed": "2023.1.1", "protobuf": "3.20.3", "fsspec": "2022.5.0", "wrapt": "1.14.0",
             "merlin-core": "23.8.0", "merlin-models": "23.8.0", "merlin-dataloader": "23.8.0", "nvtabular": "23.8.0"}
    for package, version in image.items():
        assert pinned(mirror.name, package) == version, package
    assert "matplotlib" not in mirror.read_text().lower().split("no matplotlib")[-1]


def test_gpu_worker_pins_fix_the_known_start_failures():
    # celery 5.7 dropped celery.backends.database.retry, which the celery provider imports.
    assert pinned("constraints-gpu-worker.txt", "celery") == "5.6.3"
    # kombu[redis] needs redis-py < 6.5.
    assert pinned("constraints-gpu-worker.txt", "redis") == pinned("constraints.txt", "redis") == "6.4.0"
    # OpenTelemetry releases that accept the image's protobuf 3.20.3 (1.28+ want protobuf >= 5 eventually).
    assert pinned("constraints-merlin-23.08.txt", "protobuf") == "3.20.3"
    major, minor, _ = pinned("constraints-gpu-worker.txt", "opentelemetry-proto").split(".")
    assert (int(major), int(minor)) <= (1, 27)


def test_airflow_init_validates_the_secrets_first(services):
    script = services["airflow-init"]["command"][-1]
    assert script.index("python /opt/recsys/check_airflow_secrets.py") < script.index("/entrypoint airflow version")
    example = (REPO / ".env.example").read_text()
    assert "token_urlsafe(64)" in example  # HS512 wants a 64-byte key


def test_the_secrets_check_names_each_bad_value():
    import importlib.util

    path = REPO / "scripts" / "check_airflow_secrets.py"
    spec = importlib.util.spec_from_file_location("check_airflow_secrets", path)
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    from cryptography.fernet import Fernet

    good = {"AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(), "AIRFLOW__API_AUTH__JWT_SECRET": "j" * 86,
            "AIRFLOW__API__SECRET_KEY": "k" * 43}
    assert check.problems(good) == []
    copied = {k: "change-me" for k in good}
    assert [p.split()[0] for p in check.problems(copied)] == ["AIRFLOW_FERNET_KEY", "AIRFLOW_JWT_SECRET",
                                                              "AIRFLOW_API_SECRET_KEY"]
    bad_fernet = check.problems({**good, "AIRFLOW__CORE__FERNET_KEY": "not-a-key"})
    assert len(bad_fernet) == 1 and "is not a Fernet key" in bad_fernet[0]
    short_jwt = check.problems({**good, "AIRFLOW__API_AUTH__JWT_SECRET": "x" * 43})
    assert len(short_jwt) == 1 and "43 bytes" in short_jwt[0] and ">= 64" in short_jwt[0]


def test_the_gpu_worker_draws_plots_with_a_matplotlib_for_its_numpy():
    """matplotlib comes with the install step (the image has none), pinned to the last series that accepts
    the image's numpy 1.22.4 (3.9 needs numpy >= 1.23)."""
    assert pinned("constraints-merlin-23.08.txt", "numpy") == "1.22.4"
    major, minor, _ = pinned("constraints-gpu-worker.txt", "matplotlib").split(".")
    assert (int(major), int(minor)) == (3, 8)
    assert " matplotlib" in (REPO / "scripts" / "install_gpu_worker.sh").read_text()


def test_a_lost_worker_is_noticed_in_minutes(services):
    common = services["airflow-scheduler"]["environment"]
    assert int(common["AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT"]) <= 120
    visibility = common["AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT"]
    assert visibility == "${BROKER_VISIBILITY_TIMEOUT_S:-15300}"
    assert 15300 > 240 * 60  # above the default task timeout (RECSYS_TASK_TIMEOUT_MINUTES)
