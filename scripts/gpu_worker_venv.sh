#!/usr/bin/env bash
# The GPU worker's Python, built here without Docker: a Python 3.10 venv (pyenv's 3.10, as the Merlin
# 23.08 image has) that first gets the image's Python layer from PyPI (constraints-merlin-23.08.txt,
# with a 2023 pip like the image's), then runs scripts/install_gpu_worker.sh exactly as
# Dockerfile.gpu-worker does. Idempotent: a stamp holds the hash of every input; a second run is instant.
#
#   scripts/gpu_worker_venv.sh            -> .venv-gpu-worker/   (GPU_VENV to change)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${GPU_VENV:-.venv-gpu-worker}
PY310=${PY310:-$HOME/.pyenv/versions/3.10.13/bin/python3.10}
# The pip of the image's era; new enough for the pins, old enough to catch resolver regressions (#3).
IMAGE_PIP=${IMAGE_PIP:-pip==23.2.1}
IMAGE_PACKAGES=(tensorflow keras numpy pandas dask distributed protobuf fsspec wrapt pyarrow numba scipy
                tensorflow-metadata betterproto tqdm npy-append-array pynvml packaging)
MERLIN_PACKAGES=(merlin-core merlin-dataloader merlin-models nvtabular)
# What pip check may report at the end: dask-cuda is in the image (RAPIDS build) but not mirrored here.
IMAGE_PIP_CHECK='merlin-core 23.8.0 requires dask-cuda, which is not installed.' 

# One build at a time (setup and stack.sh may both call this).
mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"
flock 9

# Two stamps, one per layer: the image's Python layer (slow: TensorFlow, Merlin) is rebuilt only when its
# inputs change; the Dockerfile's steps (Airflow, drivers, matplotlib, this package) are re-run in place
# when only theirs do, as a new image build would reuse the base image.
image_stamp="$VENV/.gpu-worker-image-layer"
steps_stamp="$VENV/.gpu-worker-steps"
image_want=$(printf '%s\n' "$PY310" "$IMAGE_PIP" "${IMAGE_PACKAGES[*]}" "${MERLIN_PACKAGES[*]}" \
             | cat - constraints-merlin-23.08.txt | sha256sum | cut -d' ' -f1)
steps_want=$(cat constraints-gpu-worker.txt pyproject.toml scripts/install_gpu_worker.sh "$0" | sha256sum | cut -d' ' -f1)
image_ok() { [ -f "$image_stamp" ] && [ "$(cat "$image_stamp")" = "$image_want" ] && [ -x "$VENV/bin/python" ]; }
if image_ok && [ -f "$steps_stamp" ] && [ "$(cat "$steps_stamp")" = "$steps_want" ]; then
  echo "==> $VENV is up to date"
  exit 0
fi
if [ ! -x "$PY310" ]; then
  PY310=$(command -v python3.10 || true)
  [ -n "$PY310" ] || { echo "gpu_worker_venv.sh: no Python 3.10 (pyenv's ~/.pyenv/versions/3.10.13 or python3.10 on PATH); set PY310" >&2; exit 1; }
fi
if image_ok; then
  echo "==> $VENV: the image layer is current; re-running the Dockerfile's install steps"
else
  echo "==> building the GPU-worker venv $VENV with $("$PY310" --version) (a few minutes the first time)"
  rm -rf "$VENV"
  "$PY310" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q "$IMAGE_PIP"
  # 1. The image: NVIDIA's Python layer, as far as PyPI has it.
  "$VENV/bin/python" -m pip install -q -c constraints-merlin-23.08.txt "${IMAGE_PACKAGES[@]}"
  "$VENV/bin/python" -m pip install -q --no-deps -c constraints-merlin-23.08.txt "${MERLIN_PACKAGES[@]}"
  echo "$image_want" > "$image_stamp"
fi
# 2. The Dockerfile's steps, same script.
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
cp constraints-gpu-worker.txt "$work/"
scripts/install_gpu_worker.sh deps "$VENV/bin/python" "$work"
scripts/install_gpu_worker.sh package "$VENV/bin/python" "$PWD"
check=$("$VENV/bin/python" -m pip check 2>&1 || true)
if [ "$check" != "$IMAGE_PIP_CHECK" ]; then
  echo "gpu_worker_venv.sh: pip check found more than the unmirrored dask-cuda:" >&2
  echo "$check" >&2
  exit 1
fi
echo "$steps_want" > "$steps_stamp"
