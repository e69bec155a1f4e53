#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 machine.
#   scripts/setup.sh           what `make run` and `make ui` need: Redis, Python 3.11 and the virtualenv with
#                              the pinned set (constraints.txt), this project installed in it
#   scripts/setup.sh --stack   also what `make test` needs for the Celery stack (scripts/stack.sh) and its
#                              browser test: PostgreSQL, Chromium + chromedriver, and the GPU-worker venv
#                              (Python 3.10, the Merlin image's Python layer, scripts/gpu_worker_venv.sh)
# Safe to run again: it only redoes what changed (stamps hold the hash of each venv's inputs).
# apt waits up to 10 minutes for another apt/dpkg process to release its lock instead of failing.
set -euo pipefail
cd "$(dirname "$0")/.."
STACK=0
case "${1:-}" in
  "") ;;
  --stack) STACK=1 ;;
  *) echo "usage: scripts/setup.sh [--stack]" >&2; exit 2 ;;
esac

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3.11}

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need_apt+=(redis-tools)
command -v "$PYTHON" >/dev/null 2>&1 || need_apt+=(python3.11 python3.11-venv)
"$PYTHON" -c "import ensurepip, venv" >/dev/null 2>&1 || need_apt+=(python3.11-venv)
if ((STACK)); then
  # The Celery stack (scripts/stack.sh) and its browser test.
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
  command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium-driver)
fi
if ((${#need_apt[@]})); then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  APT=(apt-get -o DPkg::Lock::Timeout=600)
  echo "==> apt-get install ${need_apt[*]}"
  $SUDO "${APT[@]}" update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO "${APT[@]}" install -y -qq --no-install-recommends "${need_apt[@]}"
fi
# Debian starts a system redis-server on 6379 when it can; ours never uses that port.

stamp="$VENV/.recsys-installed"
want=$(cat constraints.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "==> $VENV is up to date"
else
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  echo "==> installing the pinned set into $VENV (a few minutes the first time)"
  "$VENV/bin/python" -m pip install -q "pip<26.3"
  "$VENV/bin/python" -m pip install -q -c constraints.txt -e ".[airflow,stack,local,dev,plots,ann,peers]"
  "$VENV/bin/python" -m pip check
  echo "$want" > "$stamp"
fi
if ((STACK)); then
  scripts/gpu_worker_venv.sh
fi
