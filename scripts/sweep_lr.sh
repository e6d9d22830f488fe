#!/usr/bin/env bash
# A learning-rate sweep from the shell: one `bncompare run` per learning rate, all into one results
# directory, then `bncompare plot`. Safe to interrupt (Ctrl-C, kill) and to re-run: finished runs are
# skipped, so a re-run trains only what is missing.
#
#   scripts/sweep_lr.sh [--parallel] [CONFIG [OUT_DIR]] [BNCOMPARE_RUN_OPTIONS...]
#
#   CONFIG      default configs/mnist.yaml        OUT_DIR   default results/sweep_lr
#               (its own directory: the sweep's runs do not mix with `bncompare run CONFIG`'s in
#               results/, where a plot would read their other differences, e.g. epochs, as a sweep)
#   --parallel  start every learning rate at once (`&` + `wait`, each `--jobs 1`) instead of one
#               after another
#   LRS         environment variable: the learning rates, default "0.001 0.01 0.1 1.0"
#   options     passed on to every `bncompare run`, e.g. --set model.hidden=[512,256] --quiet
#
# Exit code: the worst of the runs' (0 ok, 1 a run failed, 2 bad config, 130 interrupted).
set -u

parallel=0
if [ "${1:-}" = "--parallel" ]; then parallel=1; shift; fi
config=configs/mnist.yaml
out=results/sweep_lr
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then config=$1; shift; fi
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then out=$1; shift; fi
lrs=${LRS:-0.001 0.01 0.1 1.0}

# Each run is started in the background and waited for, even one at a time: a shell does not pass
# Ctrl-C or `kill` on to a child it waits for, and background children ignore Ctrl-C. This trap
# hands the signal on as SIGTERM, which bncompare treats like Ctrl-C (the run is saved as
# interrupted, exit 130).
pids=()
interrupted=0
stop() {
    interrupted=1
    [ ${#pids[@]} -gt 0 ] && kill -TERM "${pids[@]}" 2>/dev/null
    return 0
}
trap stop INT TERM

worst=0
finish() {  # wait for one child (a trapped signal interrupts `wait`: wait again while it lives)
    local pid=$1 rc
    while :; do
        wait "$pid"; rc=$?
        if [ $rc -gt 128 ] && kill -0 "$pid" 2>/dev/null; then continue; fi
        break
    done
    [ $rc -gt $worst ] && worst=$rc
}

# With --parallel the rates already share the machine's cores: one process each, not one per core
# each (--jobs auto); an explicit --jobs among the options still wins (the last one counts).
jobs=()
if [ $parallel = 1 ]; then jobs=(--jobs 1); fi

for lr in $lrs; do
    [ $interrupted = 1 ] && break
    bncompare run "$config" --out "$out" --set "train.learning_rate=$lr" ${jobs[@]+"${jobs[@]}"} "$@" &
    pids+=($!)
    if [ $parallel = 0 ]; then finish $!; pids=(); fi
done
for pid in ${pids[@]+"${pids[@]}"}; do finish "$pid"; done  # (bash 3.2: empty arrays and set -u)

if [ $interrupted = 1 ] || [ $worst -ge 2 ]; then
    exit $(( interrupted ? 130 : worst ))
fi
if bncompare plot --help >/dev/null 2>&1; then
    bncompare plot "$out" || { rc=$?; [ $worst = 0 ] && worst=$rc; }
else
    echo "sweep_lr.sh: this bncompare has no 'plot' command; skipping the plots" >&2
fi
exit $worst
