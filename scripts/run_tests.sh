#!/usr/bin/env bash
# The test suite. Tests start their own Redis with RedisJSON (a free port, a temporary directory),
# their own Airflow home on SQLite, and write artifacts to a temporary directory.
#
# With no arguments (`make test`, CI) the production-stack module runs in a second pytest process beside
# the rest: it spends most of its ~15 min waiting on the scheduler, heartbeats and retry delays, with its
# own services and ports, so the two together take about the longer one's time instead of the sum
# (README, "The two commands"). Its output follows the rest's; the exit status fails if either fails.
# RECSYS_TEST_SERIAL=1 runs everything in one process, in order.
set -euo pipefail
source "$(dirname "$0")/airflow_env.sh"
cd "$REPO"
unset AIRFLOW_HOME RECSYS__ARTIFACT_ROOT
if [ $# -gt 0 ] || [ "${RECSYS_TEST_SERIAL:-0}" = 1 ]; then
  exec python -m pytest "$@"
fi

stack_log=$(mktemp "${TMPDIR:-/tmp}/recsys-test-stack.XXXXXX")
python -m pytest tests/test_stack.py >"$stack_log" 2>&1 &
stack_pid=$!
# Interrupted or failed early: stop the stack's pytest (SIGTERM runs its fixtures' teardown, so its
# services go down; tests/conftest.py) and wait for it.
trap 'kill -TERM "$stack_pid" 2>/dev/null || true; wait "$stack_pid" 2>/dev/null || true' EXIT
rest_rc=0
python -m pytest --ignore=tests/test_stack.py || rest_rc=$?
stack_rc=0
wait "$stack_pid" || stack_rc=$?
trap - EXIT
echo
echo "==================== tests/test_stack.py (run beside the rest; exit $stack_rc) ===================="
cat "$stack_log"
rm -f "$stack_log"
echo "test suite: rest exit $rest_rc, tests/test_stack.py exit $stack_rc"
[ "$rest_rc" = 0 ] && [ "$stack_rc" = 0 ]
