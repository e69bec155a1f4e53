#!/usr/bin/env bash
# `airflow dags test DAG_ID LOGICAL_DATE [ARGS...]` with every line kept in LOG and the task and stage
# lines shown as they happen (each stamped with the wall-clock time), then airflow's own exit status.
#   scripts/dag_test_live.sh LOG DAG_ID LOGICAL_DATE [ARGS...]
set -uo pipefail
log=$1; shift
pattern='\[DAG TEST\] starting task_id=[A-Za-z0-9_]+ map_index=-?[0-9]+|stage [a-z_]+ (starting( on [a-z]+)?|done in [0-9.]+s)'
# Unbuffered Python, line-buffered grep: a line reaches the console as soon as airflow writes it.
PYTHONUNBUFFERED=1 airflow dags test "$@" 2>&1 | tee "$log" | grep --line-buffered -oE "$pattern" |
  while IFS= read -r line; do
    line=${line/\[DAG TEST\] starting task_id=/task }
    printf '  %s  %s\n' "$(date -u +%H:%M:%S)" "${line/ map_index=-1/}"
  done
status=("${PIPESTATUS[@]}")
exit "${status[0]}"
