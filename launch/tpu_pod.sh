#!/usr/bin/env bash
# Cloud TPU VM pod slice: the same command on every host (gcloud --worker=all), one process per
# host driving its local TPU chips; jax.distributed.initialize() detects the pod from the TPU
# metadata (NRC_JAX_DISTRIBUTED=auto).
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b launch/tpu_pod.sh setup
#   TPU_NAME=my-v4-32 ZONE=us-central2-b launch/tpu_pod.sh run --config=configs/mlp.py \
#       --workdir=/mnt/shared/runs/hopper --config.data.name=d4rl ...
#
# setup: clones the repository (REPO_URL, default this checkout's origin; branch REPO_REF) into ~/nrc_jax on every host and
#        installs it with jax[tpu] into ~/nrc_jax/.venv.
# run:   starts `python -m nrc_jax.main <flags>` on every host; output of all hosts streams here.
# The workdir must be a path shared by all hosts (an NFS or gcsfuse mount): every host writes its
# part of each checkpoint. Data paths too (or identical local copies on every host).
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME to the TPU VM name}"
: "${ZONE:?set ZONE to the TPU zone}"
# The repository to clone on the hosts: REPO_URL, else this checkout's `origin` remote.
REPO_URL=${REPO_URL:-$(git -C "$(dirname "${BASH_SOURCE[0]}")" remote get-url origin 2>/dev/null || true)}
REPO_REF=${REPO_REF:-main}
DIR='~/nrc_jax'

on_all_hosts() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" ${PROJECT:+--project "$PROJECT"} \
    --worker=all --command "$1"
}

quote_args() {  # each argument single-quoted for the remote shell
  local out="" a
  for a in "$@"; do out+=" '${a//\'/\'\\\'\'}'"; done
  printf '%s' "$out"
}

case "${1:-}" in
  setup)
    [[ -n "$REPO_URL" ]] || { echo "set REPO_URL to the git URL of this repository" >&2; exit 2; }
    on_all_hosts "set -e
      if [ -d $DIR/.git ]; then git -C $DIR fetch -q origin && git -C $DIR checkout -q $REPO_REF && git -C $DIR pull -q;
      else git clone -q --branch $REPO_REF $REPO_URL $DIR; fi
      cd $DIR && python3 -m venv .venv && .venv/bin/pip install -q --upgrade pip
      .venv/bin/pip install -q -e . 'jax[tpu]'
      .venv/bin/python -c 'import jax; print(jax.process_count(), jax.device_count(), jax.devices()[0].platform)'"
    ;;
  run)
    shift
    # A process that fails takes the others down through JAX's heartbeat (bounded by
    # heartbeat_timeout), and NRC_JAX_INIT_TIMEOUT bounds the wait for slow hosts at start-up.
    on_all_hosts "cd $DIR && NRC_JAX_DISTRIBUTED=auto NRC_JAX_INIT_TIMEOUT=\${NRC_JAX_INIT_TIMEOUT:-600} \
      .venv/bin/python -u -m nrc_jax.main$(quote_args "$@")"
    ;;
  *)
    echo "usage: TPU_NAME=... ZONE=... $0 setup | run [nrc_jax.main flags...]" >&2
    exit 2
    ;;
esac
