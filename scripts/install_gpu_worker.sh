#!/usr/bin/env bash
# The GPU worker's install step, one definition for both places it runs:
#   Dockerfile.gpu-worker        on NVIDIA merlin-tensorflow:23.08 (python3 is the image's Python 3.10)
#   scripts/gpu_worker_venv.sh   on a local Python 3.10 venv holding the image's Python layer
#                                (constraints-merlin-23.08.txt), so the step is exercised without Docker.
#
#   install_gpu_worker.sh deps    PYTHON SRC   Airflow + Celery + drivers + matplotlib (the report's plots),
#                                              the image's ML stack frozen
#   install_gpu_worker.sh package PYTHON SRC   this package, without dependencies
#
# SRC holds constraints-gpu-worker.txt (deps) or pyproject.toml + recsys_tasks/ (package).
set -euo pipefail

step=${1:?usage: install_gpu_worker.sh deps|package PYTHON SRC}
PYTHON=${2:?python interpreter}
SRC=${3:?source directory}
AIRFLOW_VERSION=${AIRFLOW_VERSION:-3.3.2}
PIP_QUIET=${PIP_QUIET--q}

case "$step" in
  deps)
    "$PYTHON" -c "import sys; assert sys.version_info[:2] == (3, 10), f'expected Python 3.10, got {sys.version}'"
    # The image's ML stack stays exactly as installed: its versions become constraints, so a requirement
    # that would replace TensorFlow, cudf, NVTabular, numpy, ... fails the install instead of silently
    # swapping in another wheel from PyPI.
    pins="$SRC/image-pins.txt"
    "$PYTHON" -m pip list --format=freeze \
      | grep -iE '^(tensorflow|keras|merlin-|nvtabular|numpy|pandas|pyarrow|cudf|dask|distributed|rmm|cupy|numba|protobuf)[^=]*==' \
      > "$pins"
    "$PYTHON" -m pip install ${PIP_QUIET:+"$PIP_QUIET"} -c "$pins" -c "$SRC/constraints-gpu-worker.txt" \
      "apache-airflow[celery]==${AIRFLOW_VERSION}" apache-airflow-providers-redis psycopg2-binary asyncpg hiredis \
      threadpoolctl matplotlib
    # With a Postgres metadata URL, importing Airflow builds its sync and async engines: this fails when a
    # driver is missing (as the worker would at start), with no database needed.
    AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=postgresql+psycopg2://check:check@127.0.0.1:1/check \
      "$PYTHON" -c "import airflow, asyncpg, psycopg2, celery; from airflow.providers.celery.executors import celery_executor; import matplotlib; \
assert airflow.__version__ == '${AIRFLOW_VERSION}', airflow.__version__"
    ;;
  package)
    # Without dependencies: they are the image's own (TensorFlow, Merlin, NVTabular) or came with `deps`.
    "$PYTHON" -m pip install ${PIP_QUIET:+"$PIP_QUIET"} --no-deps "$SRC"
    "$PYTHON" -c "import tensorflow, nvtabular, merlin.models.tf, redis, yaml, recsys_tasks.cli"
    ;;
  *)
    echo "install_gpu_worker.sh: unknown step '$step' (deps or package)" >&2
    exit 2
    ;;
esac
