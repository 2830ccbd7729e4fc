#!/usr/bin/env bash
# gpu-check.sh — on a machine with an NVIDIA GPU, print what the fedcare site agent would report
# (the real NVML inventory, GPUReady, capacity, and the time of one NVML poll), then run one real
# CUDA training epoch (python -m fedcare_workloads.gpucheck) when that module is importable.
#
# ONE command, from a fresh copy of the repository, on a machine with python3 + pip:
#
#     scripts/gpu-check.sh [gpucheck options, e.g. --strict --allocatable 1 --polls 50]
#
# It creates a venv in /tmp (reused while pyproject.toml / constraints.txt are unchanged), runs
# `pip install -c constraints.txt -e . -e ./workloads`, and runs both checks. Environment:
#   FEDCARE_SKIP_TORCH=1      use the machine's preinstalled (CUDA) torch: the venv sees the system
#                             site-packages and the pins of torch, triton and CUDA wheels are dropped
#   FEDCARE_WHEELS=DIR        install offline from the wheels in DIR only (must hold setuptools too)
#   FEDCARE_NO_INSTALL=1      no venv, no pip: run $PYTHON with PYTHONPATH=operator:workloads, for a
#                             machine where pydantic and nvidia-ml-py are already importable
#   FEDCARE_CHECK_VENV=DIR    the venv (default /tmp/fedcare-gpucheck-venv)
#   FEDCARE_GPUCHECK_POLLS=N  timed NVML polls (default 20)
#   PYTHON                    the interpreter (default python3)
# Exit status: 0 when every check that ran passed; a check that cannot run here (no driver, no
# torch) says so in its output and does not fail the script.
#
# On a lent GPU machine with no network (torch and nvidia-ml-py preinstalled, pydantic missing),
# carry pydantic's wheels. Here, in the repo root (.whl/ is git-ignored):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
# There (carry .whl):
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl &&
#     PYTHONPATH=/tmp/site FEDCARE_NO_INSTALL=1 scripts/gpu-check.sh
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PYTHON=${PYTHON:-python3}
VENV=${FEDCARE_CHECK_VENV:-/tmp/fedcare-gpucheck-venv}
export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1

say() { echo "gpu-check: $*" >&2; }

# Prints the interpreter to run the checks with; installs into the venv when needed.
prepare() {
  if [[ ${FEDCARE_NO_INSTALL:-} == 1 ]]; then
    echo "$PYTHON"; return
  fi
  local pip_args=(-q) venv_args=() constraints=constraints.txt stamp
  if [[ ${FEDCARE_SKIP_TORCH:-} == 1 ]]; then
    venv_args+=(--system-site-packages)
    constraints=$(mktemp /tmp/fedcare-constraints.XXXXXX)
    # Keep nvidia-ml-py pinned; drop torch and the CUDA wheels that the machine's torch brings.
    grep -vE '^(torch|triton|nvidia-(cu|nccl|nvjit|nvtx|cufile|cusparselt)[a-z0-9_-]*)==' constraints.txt >"$constraints"
  fi
  if [[ -n ${FEDCARE_WHEELS:-} ]]; then
    pip_args+=(--no-index --find-links "$FEDCARE_WHEELS" --no-build-isolation)
  fi
  stamp=$(cat pyproject.toml workloads/pyproject.toml "$constraints" | sha256sum | cut -c1-16)
  stamp="$stamp ${FEDCARE_SKIP_TORCH:-0} ${FEDCARE_WHEELS:-}"
  if [[ -x $VENV/bin/python && $(cat "$VENV/.fedcare-stamp" 2>/dev/null) == "$stamp" ]]; then
    say "reusing $VENV"; echo "$VENV/bin/python"; return
  fi
  rm -rf "$VENV"
  if ! "$PYTHON" -m venv "${venv_args[@]}" "$VENV" >&2; then
    say "could not create a venv with $PYTHON; running without one"
    echo "$PYTHON"; return
  fi
  local vpy=$VENV/bin/python started=$SECONDS
  if [[ -n ${FEDCARE_WHEELS:-} ]]; then   # no build isolation offline: the venv needs setuptools
    "$vpy" -m pip install "${pip_args[@]}" setuptools wheel >&2 || say "setuptools not in $FEDCARE_WHEELS"
  fi
  if ! "$vpy" -m pip install "${pip_args[@]}" -c "$constraints" -e . >&2; then
    say "could not install fedcare into $VENV; running with $PYTHON and PYTHONPATH instead"
    echo "$PYTHON"; return
  fi
  # The workload's dependencies (torch, flwr, opacus) may be missing offline: its check is then skipped.
  "$vpy" -m pip install "${pip_args[@]}" -c "$constraints" -e ./workloads >&2 \
    || say "could not install ./workloads; its check will be skipped unless it imports anyway"
  echo "$stamp" >"$VENV/.fedcare-stamp"
  say "installed into $VENV in $((SECONDS - started))s"
  echo "$vpy"
}

PY=$(prepare)
# Harmless after an editable install; what makes FEDCARE_NO_INSTALL and the fallbacks work.
export PYTHONPATH="$ROOT/operator:$ROOT/workloads${PYTHONPATH:+:$PYTHONPATH}"
status=0

echo "== NVML inventory as the site agent reports it (python -m fedcare.site.gpucheck) =="
if ! "$PY" -c 'import pydantic' 2>/dev/null; then
  say "pydantic is not importable with $PY: see the top of this script for the wheels to carry"
  status=2
else
  "$PY" -m fedcare.site.gpucheck "$@" || status=$?
fi

echo "== One CUDA training epoch (python -m fedcare_workloads.gpucheck) =="
if why=$("$PY" -c 'import fedcare_workloads.gpucheck' 2>&1); then
  "$PY" -m fedcare_workloads.gpucheck || { rc=$?; status=$(( status ? status : rc )); }
else
  echo "{\"workload\": \"skipped\", \"reason\": \"fedcare_workloads.gpucheck is not importable\"}"
  say "workload check skipped: $(tail -n 1 <<<"$why")"
fi
exit "$status"
