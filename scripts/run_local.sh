#!/usr/bin/env bash
# The main job, locally: the DAG once end to end with `airflow dags test` on SQLite, against a local
# Redis with RedisJSON (started here on port $RECSYS_LOCAL_REDIS_PORT unless AIRFLOW_CONN_REDIS_RECS
# is already set), then one user's document and the run summary.
#   ROWS=1000000 scripts/run_local.sh     # the notebook's size
#   PARTITIONS=1 scripts/run_local.sh     # read a 7-day window of daily partitions (written first)
set -euo pipefail
source "$(dirname "$0")/airflow_env.sh"
cd "$REPO"

if [ -z "${AIRFLOW_CONN_REDIS_RECS:-}" ]; then
  python -m recsys_tasks.ops.local_redis start --port "$RECSYS_LOCAL_REDIS_PORT" --dir "$REPO/.redis"
  export AIRFLOW_CONN_REDIS_RECS="redis://127.0.0.1:$RECSYS_LOCAL_REDIS_PORT"
fi
[ -n "${ROWS:-}" ] && export RECSYS__DATA__NUM_ROWS=$ROWS

echo "==> airflow db migrate ($AIRFLOW_HOME)"
airflow db migrate >"$AIRFLOW_HOME.migrate.log" 2>&1 || { cat "$AIRFLOW_HOME.migrate.log"; exit 1; }
airflow pools set gpu 1 "GPU slots (one per GPU)" >/dev/null

logical_date=$(date -u +%Y-%m-%dT%H:%M:%S+00:00)
if [ -n "${PARTITIONS:-}" ]; then
  # Daily input: planted partitions for the 7 days ending today, read as a window by generate_data.
  end_day=${logical_date:0:10}
  start_day=$(date -u -d "$end_day -6 days" +%Y-%m-%d)
  export RECSYS__DATA__SOURCE=parquet RECSYS__DATA__PARTITION_ROOT="$REPO/.partitions"
  echo "==> planted daily partitions $start_day .. $end_day under .partitions/"
  python -m recsys_tasks make-partitions --root "$REPO/.partitions" --start "$start_day" --days 7 >/dev/null
fi
log="$AIRFLOW_HOME/last-run.log"
echo "==> airflow dags test offline_batch_recsys $logical_date   (full log: $log)"
started=$(date +%s)
status=0
scripts/dag_test_live.sh "$log" offline_batch_recsys "$logical_date" || status=$?
if [ "$status" -ne 0 ]; then
  tail -n 60 "$log"; echo "airflow dags test failed (exit $status)" >&2; exit "$status"
fi
echo "==> DAG run finished in $(( $(date +%s) - started ))s"

# Fails unless the manifest names this run, i.e. every document of this run is in Redis.
python -m recsys_tasks show --redis-url "$AIRFLOW_CONN_REDIS_RECS" --dag-id offline_batch_recsys \
  --expect-logical-date "$logical_date"
key=$(redis-cli -u "$AIRFLOW_CONN_REDIS_RECS" --scan --pattern 'USER:*' | head -n 1 || true)
echo "==> redis-cli JSON.GET $key"
redis-cli -u "$AIRFLOW_CONN_REDIS_RECS" JSON.GET "$key"
