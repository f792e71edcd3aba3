#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for the Slurm tests: munge, slurmctld and slurmd
# from Debian's packages (munge slurmctld slurmd slurm-client), configured for localhost,
# with all state under DIR. Needs root (slurmd runs jobs as their user).
#
#   tests/slurm/local-cluster.sh start DIR   # then: export SLURM_CONF=DIR/slurm.conf
#   tests/slurm/local-cluster.sh stop DIR
#
# No accounting database: finished jobs are recorded by jobcomp/filetxt, which `sacct -c`
# reads (SLURM_CONF pointing at DIR/slurm.conf).
set -euo pipefail
cmd=${1:?start or stop}
dir=$(realpath -m "${2:?state folder}")
host=$(hostname -s)
case "$cmd" in
start)
    mkdir -p "$dir"/{ctld,spool,log}
    if [ ! -f /etc/munge/munge.key ]; then
        mkdir -p /etc/munge && dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
        chown munge:munge /etc/munge/munge.key 2>/dev/null || true
        chmod 400 /etc/munge/munge.key
    fi
    mkdir -p /run/munge && chown munge:munge /run/munge 2>/dev/null || true
    pgrep -x munged >/dev/null || { if id munge >/dev/null 2>&1; then runuser -u munge -- /usr/sbin/munged; else /usr/sbin/munged -f; fi; }
    read -r cpus mem < <(slurmd -C | awk -F'[ =]' '/^NodeName/ {for (i=1;i<=NF;i++) {if ($i=="CPUs") c=$(i+1); if ($i=="RealMemory") m=$(i+1)}; print c, m}')
    cat > "$dir/slurm.conf" <<CONF
ClusterName=btx-test
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$dir/ctld
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldPort=16817
SlurmdPort=16818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
MinJobAge=3600
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/log/jobcomp.txt
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
    export SLURM_CONF="$dir/slurm.conf"
    slurmctld -c -f "$SLURM_CONF"  # -c: no state from an earlier cluster
    slurmd -f "$SLURM_CONF"
    for _ in $(seq 1 30); do
        if sinfo -h -o %T 2>/dev/null | grep -qE 'idle|mixed|alloc'; then exit 0; fi
        sleep 1
    done
    echo "the local Slurm cluster did not come up; logs in $dir/log" >&2
    exit 1
    ;;
stop)
    for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid"; do
        [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
    done
    ;;
*) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
