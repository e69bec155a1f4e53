# Sourced by the run and test scripts: an embedded Airflow (SQLite metadata under .airflow/) that
# reads this repo's dags/ and plugins/, and a local Redis with RedisJSON for the recommendations.
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PATH="$REPO/${VENV:-.venv}/bin:$PATH"
# This checkout's recsys_tasks wins over any other install, also in Airflow's task processes.
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export AIRFLOW_HOME=${AIRFLOW_HOME:-$REPO/.airflow}
export AIRFLOW__CORE__DAGS_FOLDER=$REPO/dags
export AIRFLOW__CORE__PLUGINS_FOLDER=$REPO/plugins
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT=120
export AIRFLOW__LOGGING__LOGGING_LEVEL=${AIRFLOW__LOGGING__LOGGING_LEVEL:-INFO}
export RECSYS__ARTIFACT_ROOT=${RECSYS__ARTIFACT_ROOT:-$REPO/artifacts}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
export RECSYS_LOCAL_REDIS_PORT=${RECSYS_LOCAL_REDIS_PORT:-6390}
