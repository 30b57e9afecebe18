#!/usr/bin/env bash
# Runs N processes of `python -m nrc_jax.main <args>` on this machine, joined over loopback into one
# JAX runtime with gloo CPU collectives: the multi-host code path without a cluster.
#
#   launch/local_multihost.sh N --config=configs/mlp.py --workdir=/tmp/run [more main flags]
#
# Environment (all optional):
#   NRC_JAX_DEVICES_PER_PROCESS  simulated CPU devices per process (default 2)
#   NRC_JAX_INIT_TIMEOUT         seconds a process waits for the others to join (default 60)
#   NRC_JAX_MODULE               module to run instead of nrc_jax.main (e.g. nrc_jax.inspect)
#   PYTHON                       interpreter (default: the repository's .venv, else python3)
#   JAX_PLATFORMS                default cpu
# Each output line is prefixed with [pI]. If any process fails, the others are stopped and the
# script exits with that process's status, naming it. Ctrl-C / SIGTERM are passed to every process.
set -u

usage() { echo "usage: $0 NUM_PROCESSES [nrc_jax.main flags...]" >&2; exit 2; }
[[ $# -ge 1 && "$1" =~ ^[1-9][0-9]*$ ]] || usage
num_processes=$1
shift

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$repo/.venv/bin/python" ]]; then PYTHON="$repo/.venv/bin/python"; else PYTHON=python3; fi
fi
module=${NRC_JAX_MODULE:-nrc_jax.main}
devices=${NRC_JAX_DEVICES_PER_PROCESS:-2}
[[ "$devices" =~ ^[1-9][0-9]*$ ]] || { echo "NRC_JAX_DEVICES_PER_PROCESS=$devices: expected a positive integer" >&2; exit 2; }

# A free loopback port for the coordinator (process 0 binds it a moment later).
port=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])') || exit 2
# Replace any device count already in XLA_FLAGS by ours.
xla_flags="$(echo "${XLA_FLAGS:-}" | sed -E 's/--xla_force_host_platform_device_count=[0-9]+//g') --xla_force_host_platform_device_count=$devices"

pids=()
stop_all() {  # TERM, then KILL whatever is still running after a grace period
  local signal=$1 pid
  for pid in "${pids[@]}"; do kill -"$signal" "$pid" 2>/dev/null; done
}
stop_and_wait() {
  stop_all TERM
  for _ in $(seq 50); do
    local alive=0 pid
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [[ $alive == 0 ]] && break
    sleep 0.1
  done
  stop_all KILL
  wait 2>/dev/null
}
trap 'echo "local_multihost: interrupted, stopping all processes" >&2; stop_and_wait; exit 130' INT
trap 'echo "local_multihost: terminated, stopping all processes" >&2; stop_and_wait; exit 143' TERM

cd "$repo" || exit 2
for ((i = 0; i < num_processes; i++)); do
  XLA_FLAGS="$xla_flags" JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}" \
  NRC_JAX_COORDINATOR="127.0.0.1:$port" NRC_JAX_NUM_PROCESSES="$num_processes" NRC_JAX_PROCESS_ID="$i" \
  NRC_JAX_INIT_TIMEOUT="${NRC_JAX_INIT_TIMEOUT:-60}" \
    "$PYTHON" -u -m "$module" "$@" > >(sed -u "s/^/[p$i] /") 2> >(sed -u "s/^/[p$i] /" >&2) &
  pids+=($!)
done

# Poll (portable to old bash): the first process to end decides; a failure stops the rest.
remaining=$num_processes
finished=()
while ((remaining > 0)); do
  for i in "${!pids[@]}"; do
    pid=${pids[$i]}
    [[ -n "${finished[$i]:-}" ]] && continue
    kill -0 "$pid" 2>/dev/null && continue
    wait "$pid"; status=$?
    finished[$i]=1
    remaining=$((remaining - 1))
    if ((status != 0)); then
      echo "local_multihost: process $i of $num_processes failed with exit status $status; stopping the others" >&2
      stop_and_wait
      exit "$status"
    fi
  done
  sleep 0.2
done
wait  # let the output prefixers flush
exit 0
