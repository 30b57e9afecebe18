#!/usr/bin/env bash
# One machine with one or more GPUs: a single process drives every local GPU (no coordinator).
#
#   launch/gpu.sh --config=configs/mlp.py --workdir=/tmp/runs/hopper --config.data.name=d4rl ...
#
# The mesh spans all visible GPUs (CUDA_VISIBLE_DEVICES=0,1 launch/gpu.sh ... to restrict it);
# train.batch_size must be a multiple of their number. Needs jax with CUDA:
#   pip install -e . "jax[cuda12]"
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$repo/.venv/bin/python" ]]; then PYTHON="$repo/.venv/bin/python"; else PYTHON=python3; fi
fi
cd "$repo"
# Single process on purpose: never pick up a cluster environment (e.g. inside an salloc shell).
export NRC_JAX_DISTRIBUTED=off
unset NRC_JAX_COORDINATOR NRC_JAX_NUM_PROCESSES NRC_JAX_PROCESS_ID
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
exec "$PYTHON" -u -m nrc_jax.main "$@"
