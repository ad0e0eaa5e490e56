#!/usr/bin/env bash
# A throw-away one-node SLURM cluster (slurmctld + slurmd + a private munged) in one directory.
#   tests/cluster/cluster.sh install        apt-get install slurm-wlm + munge when missing (root only)
#   tests/cluster/cluster.sh start DIR      write DIR/slurm.conf, start the daemons, wait for the node
#   tests/cluster/cluster.sh stop DIR       cancel the jobs, stop the daemons by their PID files
# Then: export SLURM_CONF=DIR/slurm.conf; sbatch/squeue/sacct talk to this cluster only.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
PARTITION="${PARTITION:-debug}"
NODE=localnode

die() { echo "cluster.sh: $*" >&2; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

install() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null && return 0
  [ "$(id -u)" = 0 ] || die "slurm-wlm and munge are missing: apt-get install slurm-wlm munge (as root)"
  export DEBIAN_FRONTEND=noninteractive
  # one apt-get at a time across the test workers (tests/debian.py takes the same lock)
  flock "${TMPDIR:-/tmp}/metalearn-tests-apt.lock" sh -c 'apt-get install -y --no-install-recommends slurm-wlm munge >/dev/null \
    || { apt-get update >/dev/null && apt-get install -y --no-install-recommends slurm-wlm munge >/dev/null; }'
}

# Poll a condition for up to $1 seconds.
wait_for() { local t=$1; shift; for _ in $(seq $((t * 5))); do "$@" && return 0; sleep 0.2; done; return 1; }

start() {
  local dir; dir="$(mkdir -p "$1" && cd "$1" && pwd)"
  [ "$(id -u)" = 0 ] || die "slurmd runs as root (it launches jobs as their user)"
  mkdir -p "$dir"/{munge,state,spool,log}
  chmod 700 "$dir/munge"
  # munge: its own key, socket and pid file (the system's munged, if any, is not used).
  dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
  chmod 400 "$dir/munge/munge.key"
  munged --force --socket="$dir/munge/munge.socket" --key-file="$dir/munge/munge.key" \
    --pid-file="$dir/munge/munged.pid" --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/munged.seed" </dev/null >>"$dir/log/daemons.out" 2>&1
  wait_for 10 test -S "$dir/munge/munge.socket" || die "munged did not start: $(cat "$dir/munge/munged.log")"

  local cpus mem
  cpus="$(nproc)"
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2 ))   # half the RAM, in MB
  sed -e "s|@DIR@|$dir|g" -e "s|@NODE@|$NODE|g" -e "s|@HOSTNAME@|$(hostname)|g" -e "s|@CTLD_HOST@|$(hostname -s)|g" -e "s|@USER@|$(id -un)|g" \
      -e "s|@CTLD_PORT@|$(free_port)|g" -e "s|@SLURMD_PORT@|$(free_port)|g" -e "s|@CPUS@|$cpus|g" \
      -e "s|@MEM_MB@|$mem|g" -e "s|@PARTITION@|$PARTITION|g" "$HERE/slurm.conf.in" > "$dir/slurm.conf"
  # no cgroup.conf: the plugins above do not use cgroups
  export SLURM_CONF="$dir/slurm.conf"
  # A real site's nodes read /etc/slurm/slurm.conf (or get it from slurmctld, "configless"); this
  # cluster's file is only named by $SLURM_CONF, and snakemake-executor-plugin-slurm-jobstep clears
  # every SLURM_* variable but the job's identity before its `srun` inside the job. So the cluster
  # puts an `srun` first on PATH that names the file again (PATH=DIR/bin:$PATH for the jobs).
  mkdir -p "$dir/bin"
  printf '#!/bin/sh\nSLURM_CONF=%s exec %s "$@"\n' "$SLURM_CONF" "$(command -v srun)" > "$dir/bin/srun"
  chmod +x "$dir/bin/srun"
  # The daemons detach; their stdio goes to a file so that no caller waits on an inherited pipe.
  slurmctld -f "$SLURM_CONF" -i </dev/null >>"$dir/log/daemons.out" 2>&1   # -i: no saved state to read
  slurmd -f "$SLURM_CONF" -N "$NODE" </dev/null >>"$dir/log/daemons.out" 2>&1
  wait_for 30 test -s "$dir/slurmctld.pid" || die "slurmctld did not start: $(tail -20 "$dir/log/slurmctld.log")"
  wait_for 30 test -s "$dir/slurmd.pid" || die "slurmd did not start: $(tail -20 "$dir/log/slurmd.log")"
  node_idle() { sinfo -h -N -o %t 2>/dev/null | grep -qx idle; }
  wait_for 60 node_idle || die "the node is not idle: $(sinfo -N 2>&1; tail -20 "$dir/log/slurmd.log")"
  echo "SLURM_CONF=$SLURM_CONF"
}

stop_pid() {  # stop_pid FILE: SIGTERM the process in FILE, SIGKILL after 15 s, remove FILE
  [ -s "$1" ] || return 0
  local pid; pid="$(cat "$1")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    wait_for 15 bash -c "! kill -0 $pid 2>/dev/null" || kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$1"
}

stop() {
  local dir; dir="$(cd "$1" && pwd)"
  export SLURM_CONF="$dir/slurm.conf"
  if [ -s "$dir/slurmctld.pid" ]; then
    scancel --full --user "$(id -un)" 2>/dev/null || true
    jobs_gone() { [ -z "$(squeue -h -t R,CG,PD -o %i 2>/dev/null)" ]; }
    wait_for 30 jobs_gone || true
  fi
  stop_pid "$dir/slurmd.pid"
  stop_pid "$dir/slurmctld.pid"
  stop_pid "$dir/munge/munged.pid"
}

case "${1:-}" in
  install) install ;;
  start) [ $# = 2 ] || die "usage: $0 start DIR"; start "$2" ;;
  stop) [ $# = 2 ] || die "usage: $0 stop DIR"; stop "$2" ;;
  *) die "usage: $0 install | start DIR | stop DIR" ;;
esac
