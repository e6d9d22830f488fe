#!/usr/bin/env bash
# Every verdict row of the README's "What BatchNorm changes" table (docs/findings.md), as measured for
# this release: 5 seeds per row; PreciseBN wherever a run's final eval point comes before step 299
# (where BN's moving averages at bn_momentum 0.99 still give their start more than 5% of their
# weight), read with `--metric val_accuracy_precise`; the normaliser and residual comparisons at
# budgets where every BN-family normaliser's moving averages have converged (600-1,000 steps); the
# Bjorck et al. 2018 row with each variant at its own best learning rate, chosen on held-out
# validation data and reported on the test split (`compare --tune`, `record.test`).
#
#   bash benchmarks/verdicts.sh [OUT_DIR]      (default results/verdicts; re-running trains only
#                                               what is missing, as `bncompare run` always does)
#
# Each row is one `bncompare run` followed by the `bncompare compare` that gives the row; the
# comparison is printed and saved as OUT_DIR/<row>.md (markdown), and the row's wall time is printed
# with the 1-minute load average. Every row's compare table names its seeds, and reads "cannot tell
# at n seeds (about N would)" where its Holm-adjusted test (over the rows of that one compare) does
# not exclude 0 (docs/compare.md).
#
# Takes: 62 minutes on a 2-core CPU shared with other work (load 4-9), `--jobs 2`; the minutes after
# each row's name are that measurement's. The README's numbers must come from one machine: the
# script starts by printing the CPU and instruction set that metrics.json records (`environment`).
set -uo pipefail
cd "$(dirname "$0")/.."

OUT="${1:-results/verdicts}"
SEEDS="train.seeds=[0,1,2,3,4]"
PRECISE="record.bn_eval=[moving,precise]"
status=0

row() {  # NAME MINUTES: start a row
    echo
    echo "== $1 (estimated $2 min; load $(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo ?))"
    SECONDS=0
}

verdict() {  # NAME EXPERIMENT [COMPARE OPTIONS...]: the row's comparison, printed and saved
    local name=$1 experiment=$2
    shift 2
    echo "bncompare compare $OUT/$experiment $*" > "$OUT/$name.md"
    bncompare compare "$OUT/$experiment" "$@" --format markdown | tee -a "$OUT/$name.md" || status=1
    echo "-- $name: ${SECONDS} s"
}

train() {  # bncompare run ..., into OUT; a failed run is reported, the other rows still run
    bncompare run "$@" --out "$OUT" --quiet --jobs 2 || { echo "bncompare run $*: exit $?"; status=1; }
}

mkdir -p "$OUT"
python -c 'from bncompare.backend import cpu; print("machine:", cpu())' | tee "$OUT/machine.txt"

row normalizers 6.3   # 105 runs of 1,000 steps on all 60,000 images: converged moving averages
train configs/normalizers.yaml --set train.steps=1000 --set "$SEEDS"
verdict normalizers normalizers

row residual 12.4   # 100 runs of 600 steps: converged moving averages
train configs/residual.yaml --set data.train_limit=10000 --set train.steps=600 --set "$SEEDS"
verdict residual residual
verdict residual-depth24 residual --baseline res_no_bn --where model.depth=24

row santurkar2018 5.7   # 15 runs of 2,000 steps with the landscape and ICS probes
train configs/santurkar2018.yaml --set train.steps=2000 --set data.train_limit=10000 --set "$SEEDS"
verdict santurkar2018 santurkar2018

row fashion_cnn 10.8   # 10 runs of 94 steps: PreciseBN (the moving averages collapse here)
train configs/fashion_cnn.yaml --set data.train_limit=3000 --set train.epochs=2 --set "$SEEDS" \
    --set record.eval_every=20 --set "record.bn_eval=[moving,precise,batch]" --set record.train_eval=3000
verdict fashion_cnn fashion_cnn --metric val_accuracy_precise
verdict fashion_cnn-moving fashion_cnn --metric val_accuracy

row depth 5.8   # 40 runs of 188 steps: PreciseBN
train configs/depth.yaml --set data.train_limit=3000 --set "$SEEDS" --set "$PRECISE" --set record.gradients=false
verdict depth depth --metric val_accuracy_precise

row batch_size 4.2   # 50 runs; batch 256 trains 8 steps: PreciseBN
train configs/batch_size.yaml --set data.train_limit=1000 --set "$SEEDS" --set "$PRECISE"
verdict batch_size batch_size --metric val_accuracy_precise

row regularization 3.4   # 20 runs, 940 steps; train_eval: the gap in inference mode
train configs/regularization.yaml --set data.train_limit=3000 --set train.epochs=10 --set "$SEEDS" \
    --set record.train_eval=3000
verdict regularization regularization

row ioffe2015_fig1 3.4   # 10 runs, 5,000 steps
train configs/ioffe2015_fig1.yaml --set train.steps=5000 --set record.eval_every=250 --set "$SEEDS"
verdict ioffe2015_fig1 ioffe2015_fig1

row learning_rates 3.5   # 100 runs of 94 steps: PreciseBN
train configs/learning_rates.yaml --set data.train_limit=3000 --set train.epochs=1 --set "$SEEDS" --set "$PRECISE"
verdict learning_rates learning_rates --metric val_accuracy_precise

row bjorck2018 2.2   # 50 runs of 626 steps (relu): each variant at its own best learning rate
train configs/learning_rates.yaml --set name=bjorck2018 --set model.activation=relu \
    --set data.validation=0.1 --set record.test=true --set data.train_limit=10000 \
    --set train.epochs=2 --set "$SEEDS"
verdict bjorck2018 bjorck2018 --tune train.learning_rate --metric test_accuracy

row convergence 1.2   # 10 runs, 626 steps
train configs/convergence.yaml --set data.train_limit=10000 --set train.epochs=2 \
    --set record.eval_every=50 --set "$SEEDS"
verdict convergence convergence

row initialization 1.7   # 30 runs, 626 steps
train configs/initialization.yaml --set data.train_limit=10000 --set "$SEEDS"
verdict initialization initialization

row stability 2.4   # 30 runs, 314 steps
train configs/stability.yaml --set data.train_limit=5000 --set train.epochs=2 --set "$SEEDS"
verdict stability stability

exit $status
