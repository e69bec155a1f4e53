#!/usr/bin/env bash
# `make ui`: the Airflow UI over `make run`'s embedded home (.airflow/, SQLite): an api-server, a scheduler and
# a dag-processor (LocalExecutor) in the foreground; Ctrl-C (or SIGTERM to it) stops all three. Prints the
# address and login.
# Every listener is on 127.0.0.1; the login is kept in .airflow/ui-passwords.json.
#   RECSYS_UI_PORT=8080 scripts/ui.sh
set -euo pipefail
source "$(dirname "$0")/airflow_env.sh"
cd "$REPO"

PORT=${RECSYS_UI_PORT:-8080}
[ -f "$AIRFLOW_HOME/airflow.db" ] || { echo "ui.sh: no $AIRFLOW_HOME/airflow.db yet: run make run first" >&2; exit 1; }
if ! python -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', $PORT))" 2>/dev/null; then
  echo "ui.sh: port $PORT on 127.0.0.1 is taken; choose another with RECSYS_UI_PORT=..." >&2; exit 1
fi
passwords=$AIRFLOW_HOME/ui-passwords.json
if [ ! -f "$passwords" ]; then
  (umask 077; python -c "import json, secrets; print(json.dumps({'admin': secrets.token_urlsafe(12)}))" >"$passwords")
fi
password=$(python -c "import json, sys; print(json.load(open(sys.argv[1]))['admin'])" "$passwords")

# One secret for the three processes (the scheduler's task processes call the api-server's Execution API).
AIRFLOW__API_AUTH__JWT_SECRET=$(python -c "import secrets; print(secrets.token_urlsafe(64))")
export AIRFLOW__API_AUTH__JWT_SECRET
export AIRFLOW__CORE__EXECUTOR=LocalExecutor
export AIRFLOW__API__HOST=127.0.0.1 AIRFLOW__API__PORT=$PORT AIRFLOW__API__BASE_URL=http://127.0.0.1:$PORT
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL=http://127.0.0.1:$PORT/execution/
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=admin:admin AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=$passwords
export AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST=127.0.0.1
# Without a local Redis the downstream DAG's task still runs; offline_batch_recsys needs it (make run starts it).
export AIRFLOW_CONN_REDIS_RECS=${AIRFLOW_CONN_REDIS_RECS:-redis://127.0.0.1:$RECSYS_LOCAL_REDIS_PORT}

pids=()
stop() { trap - INT TERM EXIT; kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap stop INT TERM EXIT
airflow api-server >"$AIRFLOW_HOME/ui-api-server.log" 2>&1 & pids+=($!)
# The api-server reads task logs from .airflow/logs: no log server (it would listen on every interface).
airflow scheduler --skip-serve-logs >"$AIRFLOW_HOME/ui-scheduler.log" 2>&1 & pids+=($!)
airflow dag-processor >"$AIRFLOW_HOME/ui-dag-processor.log" 2>&1 & pids+=($!)

deadline=$((SECONDS + 180))
until python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/api/v2/monitor/health', timeout=5)" \
    2>/dev/null; do
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || { tail -n 30 "$AIRFLOW_HOME"/ui-*.log >&2; echo "ui.sh: a process exited" >&2; exit 1; }
  done
  ((SECONDS < deadline)) || { tail -n 30 "$AIRFLOW_HOME"/ui-*.log >&2; echo "ui.sh: no UI after 180 s" >&2; exit 1; }
  sleep 2
done
echo "==> Airflow UI: http://127.0.0.1:$PORT   login admin / $password   (Ctrl-C stops it)"
echo "    runs of make run: http://127.0.0.1:$PORT/dags/offline_batch_recsys   logs: $AIRFLOW_HOME/ui-*.log"
wait -n "${pids[@]}" || true
echo "ui.sh: a process exited; last log lines:" >&2
tail -n 20 "$AIRFLOW_HOME"/ui-*.log >&2
exit 1
