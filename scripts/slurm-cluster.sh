#!/usr/bin/env bash
# A throwaway one-node Slurm cluster for sprout's tests, entirely under one
# directory: munge key, socket and daemon, slurm.conf, controller state,
# slurmd spool, logs and pid files. It listens on localhost only and keeps no
# accounting database.
#
#   scripts/slurm-cluster.sh start DIR   # start (or find running) and wait for an idle node
#   scripts/slurm-cluster.sh stop DIR    # cancel its jobs, stop its daemons
#
# Run as root (slurmd must be able to start jobs as any user). After `start`,
# DIR/env holds the variables the client commands need:
#
#   . DIR/env && sbatch --wrap hostname && squeue
#
# `start` is idempotent: with the cluster already up it only prints the
# environment again. A fresh start regenerates slurm.conf with free ports and
# clears any previous controller state (it is a test cluster). `stop` ends
# exactly the daemons named in DIR's pid files, the job step daemons they
# started and those steps' processes; it succeeds when nothing is running.
#
# Written for Debian 12 (slurm-wlm 22.05, munge 0.5.15):
#   apt-get install -y slurm-wlm munge
set -euo pipefail

die() {
  echo "slurm-cluster: $*" >&2
  exit 1
}

usage() {
  echo "usage: $0 start DIR | stop DIR" >&2
  exit 2
}

[ $# -eq 2 ] || usage
cmd=$1
[ "$cmd" = start ] || [ "$cmd" = stop ] || usage
[ -n "$2" ] || usage
case $2 in
  *[[:space:]]* | *,* | *\"* | *\'* | *\\*) die "DIR must not hold spaces, commas, quotes or backslashes (it goes into slurm.conf): $2" ;;
esac
if [ "$cmd" = stop ] && [ ! -d "$2" ]; then
  echo "slurm-cluster: no cluster in $2"
  exit 0
fi
mkdir -p "$2"
dir=$(cd "$2" && pwd -P)

# Every daemon is started with this variable in its environment, so `stop`
# can find the job step daemons (slurmstepd) that slurmd forks for this
# cluster without looking processes up by name.
marker="SPROUT_SLURM_CLUSTER=$dir"

conf=$dir/slurm.conf
munge_dir=$dir/munge
socket=$munge_dir/munge.socket
munged_pid=$munge_dir/munged.pid
ctld_pid=$dir/run/slurmctld.pid
slurmd_pid=$dir/run/slurmd.pid

# Whether PID runs: exists and is no zombie (where init is slow to reap,
# a stopped daemon lingers as one).
alive() {
  local rest
  kill -0 "$1" 2>/dev/null || return 1
  read -r rest 2>/dev/null </proc/"$1"/stat || return 1
  rest=${rest##*) }
  [ "${rest%% *}" != Z ]
}

# The pid in FILE when that process is alive.
live_pid() {
  local pid
  [ -f "$1" ] || return 1
  pid=$(tr -dc 0-9 <"$1")
  [ -n "$pid" ] && alive "$pid" || return 1
  echo "$pid"
}

# Sends TERM to the process in pid FILE, waits up to 15 s for it to exit,
# then sends KILL. Removes the pid file.
stop_pidfile() {
  local pid
  if pid=$(live_pid "$1"); then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 150); do
      alive "$pid" || break
      sleep 0.1
    done
    if alive "$pid"; then
      echo "slurm-cluster: $2 (pid $pid) ignored TERM, killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$1"
}

# Pids of live processes whose environment holds the marker.
marked_pids() {
  local e pid
  for e in /proc/[0-9]*/environ; do
    pid=${e#/proc/}
    pid=${pid%/environ}
    [ "$pid" = $$ ] && continue
    if tr '\0' '\n' 2>/dev/null <"$e" | grep -qxF "$marker"; then
      echo "$pid"
    fi
  done
}

# PIDS and all their descendants, read from /proc/*/stat.
with_descendants() {
  local -A parent=()
  local s pid rest ppid p
  for s in /proc/[0-9]*/stat; do
    read -r rest 2>/dev/null <"$s" || continue
    pid=${rest%% *}
    rest=${rest##*) }
    read -r _ ppid _ <<<"$rest"
    parent[$pid]=$ppid
  done
  local -A keep=()
  for p in "$@"; do keep[$p]=1; done
  local changed=1
  while [ $changed = 1 ]; do
    changed=0
    for pid in "${!parent[@]}"; do
      if [ -z "${keep[$pid]:-}" ] && [ -n "${keep[${parent[$pid]}]:-}" ]; then
        keep[$pid]=1
        changed=1
      fi
    done
  done
  echo "${!keep[@]}"
}

cluster_answers() {
  [ -f "$conf" ] && SLURM_CONF=$conf timeout 10 sinfo -h >/dev/null 2>&1
}

stop_cluster() {
  if live_pid "$ctld_pid" >/dev/null && [ -f "$conf" ]; then
    # Cancel the cluster's jobs while the controller can still tell slurmd.
    local jobs
    jobs=$(SLURM_CONF=$conf timeout 10 squeue -h -o %A 2>/dev/null || true)
    if [ -n "$jobs" ]; then
      # shellcheck disable=SC2086
      SLURM_CONF=$conf timeout 10 scancel $jobs 2>/dev/null || true
      for _ in $(seq 100); do
        [ -z "$(SLURM_CONF=$conf timeout 10 squeue -h -o %A 2>/dev/null)" ] && break
        sleep 0.2
      done
    fi
  fi
  stop_pidfile "$slurmd_pid" slurmd
  stop_pidfile "$ctld_pid" slurmctld
  # Job step daemons that outlived slurmd, and whatever they run.
  local left pids
  left=$(marked_pids)
  if [ -n "$left" ]; then
    # shellcheck disable=SC2086
    pids=$(with_descendants $left)
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
  fi
  stop_pidfile "$munged_pid" munged
  rm -f "$socket" "$socket.lock"
}

# A TCP port nothing listens on, from a range clear of Slurm's defaults.
free_port() {
  local p
  for _ in $(seq 200); do
    p=$((20000 + RANDOM % 40000))
    [ "$p" = "${1:-}" ] && continue
    if [ -z "$(ss -Htln "sport = :$p" 2>/dev/null)" ]; then
      echo "$p"
      return
    fi
  done
  die "no free TCP port found"
}

print_env() {
  cat "$dir/env"
  echo "# slurm-cluster: $(SLURM_CONF=$conf sinfo -h -o 'node %n %T, %c CPUs' 2>/dev/null | head -n 1), partition debug, conf $conf"
}

if [ "$cmd" = stop ]; then
  stop_cluster
  echo "slurm-cluster: stopped $dir"
  exit 0
fi

# ---- start ----
[ "$(id -u)" = 0 ] || die "must run as root"
for b in munged mungekey slurmctld slurmd sinfo squeue scancel ss; do
  command -v "$b" >/dev/null || die "$b not found (apt-get install -y slurm-wlm munge)"
done

if live_pid "$ctld_pid" >/dev/null && live_pid "$slurmd_pid" >/dev/null &&
  live_pid "$munged_pid" >/dev/null && cluster_answers; then
  print_env
  exit 0
fi
# Half started or left behind by a crash: clear it and start afresh.
stop_cluster

started=$(date +%s.%N)
node=$(hostname -s)
cpus=$(nproc)
# A little under the memory slurmd measures, so the node is never drained
# for having less than configured.
mem=$(free -m | awk '/^Mem:/ { printf "%d", $2 * 0.95 }')
ctld_port=$(free_port)
slurmd_port=$(free_port "$ctld_port")

mkdir -p "$munge_dir" "$dir/state" "$dir/spool" "$dir/log" "$dir/run"
# munged refuses a socket directory others cannot search, and a key file
# anyone but its owner can read.
chmod 755 "$munge_dir"
rm -rf "$dir/state" && mkdir -p "$dir/state"
if [ ! -s "$munge_dir/munge.key" ]; then
  mungekey --create --keyfile="$munge_dir/munge.key"
fi
chmod 600 "$munge_dir/munge.key"
: >"$dir/plugstack.conf"

cat >"$conf" <<EOF
# Generated by scripts/slurm-cluster.sh for a one-node test cluster.
ClusterName=sprout-test
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# The munge socket of this cluster's own munged; a requeued job may start
# again after cred_expire seconds (default 120).
AuthInfo=socket=$socket,cred_expire=30
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$ctld_pid
SlurmdPidFile=$slurmd_pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
PlugStackConfig=$dir/plugstack.conf
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# Jobs are found by process group: proctrack/linuxproc, which walks /proc,
# has missed a running task here when two started at once, so a requeued
# task kept running beside its second attempt. (No cgroups needed.)
ProctrackType=proctrack/pgid
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
KillWait=10
# Keep finished jobs visible to scontrol for an hour (there is no sacct).
MinJobAge=3600
MaxArraySize=10001
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF

# The Slurm daemons get a plain environment plus the marker; munged only
# the plain environment (it is stopped by its pid file).
daemon() {
  env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$marker" SLURM_CONF="$conf" "$@"
}

env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin munged --key-file="$munge_dir/munge.key" --socket="$socket" \
  --pid-file="$munged_pid" --log-file="$munge_dir/munged.log" \
  --seed-file="$munge_dir/munged.seed" ||
  die "munged did not start; see $munge_dir/munged.log"
daemon slurmctld -f "$conf" || die "slurmctld did not start; see $dir/log/slurmctld.log"
daemon slurmd -f "$conf" -N "$node" || die "slurmd did not start; see $dir/log/slurmd.log"

cat >"$dir/env" <<EOF
export SLURM_CONF=$conf
EOF

state=
for _ in $(seq 120); do
  state=$(SLURM_CONF=$conf timeout 10 sinfo -h -n "$node" -o %T 2>/dev/null || true)
  [ "$state" = idle ] && break
  sleep 0.5
done
if [ "$state" != idle ]; then
  echo "slurm-cluster: node $node not idle after 60 s (state '${state}'); last log lines:" >&2
  tail -n 5 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2 || true
  stop_cluster
  exit 1
fi
echo "# slurm-cluster: started in $(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s"
print_env
