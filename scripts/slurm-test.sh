#!/usr/bin/env bash
# A one-node Slurm cluster on loopback, and a small cardinality grid submitted to it as a job
# array: 4 cells of a tiny preset, 2 at a time, then the report job after them. Checks that
# every cell finished and the report was written, and stops every daemon it started.
#
# Usage: scripts/slurm-test.sh CARDINAL_BINARY
# Needs root (slurmd and munged run as root here) and Debian's slurm-wlm and munge, which it
# installs with apt-get when they are missing.
set -euo pipefail

cardinal=$(realpath "${1:?usage: $0 CARDINAL_BINARY}")
root=$(cd "$(dirname "$0")/.." && pwd)
if [ "$(id -u)" != 0 ]; then
    echo "slurm-test: needs root (slurmd, munged); run it with sudo" >&2
    exit 2
fi
if ! command -v slurmctld > /dev/null || ! command -v munged > /dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge > /dev/null
fi

work=$(mktemp -d /tmp/cardinal-slurm.XXXXXX)
chmod 755 "$work"
pids=()
stop() {
    status=$?
    for pid in "${pids[@]}"; do kill "$pid" 2> /dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2> /dev/null || true; done
    if [ "$status" != 0 ]; then
        echo "slurm-test failed; logs:" >&2
        shopt -s nullglob
        for log in "$work"/*.log "$work"/*.out "$work"/runs*/*/slurm/*.out; do
            echo "== $log" >&2
            tail -n 30 "$log" >&2 || true
        done
    fi
    rm -rf "$work"
    exit "$status"
}
trap stop EXIT

# munge: a fresh key and a private socket, so nothing on the machine is touched.
mkdir -m 700 "$work/munge"
mungekey --create --keyfile="$work/munge/munge.key" 2> /dev/null ||
    dd if=/dev/urandom of="$work/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$work/munge/munge.key"
munged --foreground --force --key-file="$work/munge/munge.key" \
    --socket="$work/munge/munge.socket" --pid-file="$work/munge/munged.pid" \
    --log-file="$work/munged.log" --seed-file="$work/munge/munged.seed" > /dev/null 2>&1 &
pids+=($!)

host=$(hostname -s)
node=$(slurmd -C | head -n 1) # NodeName=... CPUs=... as slurmd detects them
mkdir -p "$work/state" "$work/spool"
cat > "$work/slurm.conf" << EOF
ClusterName=cardinal-test
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=16817
SlurmdPort=16818
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$work/munge/munge.socket
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/slurmctld.log
SlurmdLogFile=$work/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF="$work/slurm.conf"
# Wait for munged's socket before the Slurm daemons authenticate through it.
for _ in $(seq 50); do [ -S "$work/munge/munge.socket" ] && break; sleep 0.1; done
slurmctld -D -i -f "$SLURM_CONF" > "$work/slurmctld.out" 2>&1 &
pids+=($!)
slurmd -D -f "$SLURM_CONF" -N "$host" > "$work/slurmd.out" 2>&1 &
pids+=($!)
for _ in $(seq 60); do
    sinfo -h -o %T 2> /dev/null | grep -qE '^(idle|mixed|allocated)' && break
    sleep 1
done
sinfo -h -o '%P %D %T %c' | sed 's/^/slurm-test: partition /'

# 2 cardinalities x 2 seeds = 4 cells, each a few optimizer steps on 256 images.
cd "$root"
"$cardinal" ablate cardinality --runs-dir "$work/runs" --reports-dir "$work/reports" \
    --launcher slurm --max-parallel 2 \
    --cpus-per-task 1 --time 00:10:00 --submit \
    'sweep.cardinality.values=[1,4]' 'seeds=[0,1]' train.epochs=1 \
    train.train_images=256 train.test_images=256 train.batch_size=64 |
    tee "$work/submit.txt"
report_job=$(sed -n 's/^report job \([0-9]*\).*/\1/p' "$work/submit.txt")

deadline=$((SECONDS + 300))
while squeue -h | grep -q .; do
    if [ $SECONDS -gt $deadline ]; then
        echo "slurm-test: jobs still queued after 300 s:" >&2
        squeue >&2
        exit 1
    fi
    sleep 2
done

# A cell that failed before writing status.json counts as unfinished (and the exit trap
# prints every cell's output, where its error is).
finished=$(cat "$work"/runs/cardinality/*/status.json 2> /dev/null | grep -c '"finished"' || true)
echo "slurm-test: $finished of 4 cells finished"
[ "$finished" = 4 ]
for cell in 0 1 2 3; do
    grep -q 'finished\|skipped\|epoch' "$work/runs/cardinality/slurm/cell-$cell.out" || {
        echo "slurm-test: cell $cell wrote no output" >&2
        exit 1
    }
done
# The overrides make it a custom variant of the default preset: reports/cardinality-custom.
report="$work/reports/cardinality-custom/README.md"
grep -q '4 of 4 runs finished' "$report" && [ -s "$work/reports/cardinality-custom/curves.png" ] || {
    echo "slurm-test: report job $report_job did not write the report:" >&2
    cat "$work/runs/cardinality/slurm/report.out" >&2
    exit 1
}
echo "slurm-test: report job $report_job wrote $report:"
sed -n '/^## Errors/,/^## Figures/p' "$report"

# A cell that fails leaves its reason in its output file: one cell on a dataset that does
# not exist.
"$cardinal" ablate cardinality --runs-dir "$work/runs-failing" --reports-dir "$work/reports-failing" \
    --launcher slurm --cpus-per-task 1 --time 00:05:00 --submit \
    'sweep.cardinality.values=[1]' 'seeds=[0]' train.epochs=1 dataset.name=no-such-dataset > /dev/null
deadline=$((SECONDS + 120))
while squeue -h | grep -q .; do
    [ $SECONDS -le $deadline ] || { echo "slurm-test: the failing cell is still queued" >&2; exit 1; }
    sleep 2
done
failing="$work/runs-failing/cardinality/slurm/cell-0.out"
if ! grep -q "error: .*no-such-dataset" "$failing"; then
    echo "slurm-test: the failing cell did not leave its error in $failing:" >&2
    cat "$failing" >&2 || true
    exit 1
fi
echo "slurm-test: a failing cell says why: $(grep -m 1 'error:' "$failing")"
echo "slurm-test: passed"
