#!/usr/bin/env bash
# A one-node Slurm on this machine, for the executor's tests and for trying
# `distillery run --executor slurm` without a cluster. Needs root (munged and
# slurmd run as root here) and Debian's slurm-wlm and munge packages.
#
#   scripts/slurm/local-cluster.sh start DIR   # writes DIR/slurm.conf, starts the daemons
#   export SLURM_CONF=DIR/slurm.conf           # then sbatch, squeue, ... use it
#   scripts/slurm/local-cluster.sh stop DIR
#
# SLURMCTLD_PORT and SLURMD_PORT choose the ports (default 6817 and 6818),
# so that a test's cluster does not meet another one on the same machine.
set -euo pipefail

usage() { echo "usage: $0 start|stop DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
command=$1
dir=$(realpath -m "$2")

stop_daemon() {
    local pidfile=$1
    [ -f "$pidfile" ] || return 0
    local pid
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
}

case $command in
start)
    for tool in munged slurmctld slurmd sinfo; do
        command -v "$tool" >/dev/null || {
            echo "error: $tool is missing: apt-get install slurm-wlm munge" >&2
            exit 1
        }
    done
    mkdir -p "$dir/state" "$dir/spool"
    host=$(hostname -s)
    cat > "$dir/slurm.conf" <<CONF
ClusterName=local
SlurmctldHost=$host
SlurmctldPort=${SLURMCTLD_PORT:-6817}
SlurmdPort=${SLURMD_PORT:-6818}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
MpiDefault=none
# Finished jobs stay known to scontrol for 10 minutes (their final state);
# a cancelled job gets SIGKILL 5 s after SIGTERM.
MinJobAge=600
KillWait=5
NodeName=$host CPUs=$(nproc) RealMemory=8000 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
    if [ ! -s /etc/munge/munge.key ]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
        chmod 400 /etc/munge/munge.key
    fi
    mkdir -p /run/munge
    pgrep -x munged >/dev/null || munged --force
    export SLURM_CONF=$dir/slurm.conf
    slurmctld -f "$SLURM_CONF"
    slurmd -f "$SLURM_CONF"
    for _ in $(seq 600); do
        state=$(sinfo --noheader --format=%t 2>/dev/null || true)
        if [ "$state" = idle ]; then
            echo "export SLURM_CONF=$SLURM_CONF"
            exit 0
        fi
        sleep 0.1
    done
    echo "error: the node did not become idle within 60 s (sinfo says '${state:-nothing}'); see $dir/slurmctld.log and $dir/slurmd.log" >&2
    exit 1
    ;;
stop)
    stop_daemon "$dir/slurmd.pid"
    stop_daemon "$dir/slurmctld.pid"
    ;;
*)
    usage
    ;;
esac
