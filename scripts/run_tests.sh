#!/usr/bin/env bash
# The test suite. Tests start their own Redis with RedisJSON (a free port, a temporary directory),
# their own Airflow home on SQLite, and write artifacts to a temporary directory.
set -euo pipefail
source "$(dirname "$0")/airflow_env.sh"
cd "$REPO"
unset AIRFLOW_HOME RECSYS__ARTIFACT_ROOT
exec python -m pytest "$@"
