#!/usr/bin/env bash
# Every verdict row of the README's "What BatchNorm changes" table, re-measured so that it can carry
# its words: 5 seeds per row; PreciseBN next to the moving averages wherever BN's lag warning fires
# (an eval point before step 299 at bn_momentum 0.99); the normaliser and residual comparisons at
# budgets where every BN-family normaliser's moving averages have converged (300+ steps at every
# batch size); the Bjorck et al. 2018 row with each variant at its own best learning rate, chosen on
# held-out validation data and reported on the test split (`compare --tune`, `record.test`).
#
#   bash benchmarks/verdicts.sh [OUT_DIR]      (default results/verdicts; re-running trains only
#                                               what is missing, as `bncompare run` always does)
#
# Each row is one `bncompare run` followed by the `bncompare compare` that gives the row; the
# comparison is printed and saved as OUT_DIR/<row>.md (markdown), and the row's wall time is printed
# with the 1-minute load average. Every row's compare table names its seeds, and reads "cannot tell
# at n seeds (about N would)" where the Holm-adjusted rank test does not exclude 0 (Holm over the
# rows of that one compare).
#
# Takes: about 60 minutes on an idle 2-core CPU, estimated per row (the minutes after each row's
# name) from the configs' own "Takes:" comments scaled to the row's steps, runs and eval points;
# nothing here was timed on a shared machine. The README's numbers must come from one machine: the
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
    bncompare run "$@" --out "$OUT" --quiet || { echo "bncompare run $*: exit $?"; status=1; }
}

mkdir -p "$OUT"
python -c 'from bncompare.backend import cpu; print("machine:", cpu())' | tee "$OUT/machine.txt"

row convergence 2   # 10 runs, 626 steps; eval points from step 50 (lag): PreciseBN for the curves
train configs/convergence.yaml --set data.train_limit=10000 --set train.epochs=2 \
    --set record.eval_every=50 --set "$SEEDS" --set "$PRECISE"
verdict convergence convergence

row ioffe2015_fig1 3   # 10 runs, 5,000 steps; the step-250 numbers are lagged: PreciseBN
train configs/ioffe2015_fig1.yaml --set train.steps=5000 --set record.eval_every=250 \
    --set "$SEEDS" --set "$PRECISE"
verdict ioffe2015_fig1 ioffe2015_fig1

row learning_rates 4   # 100 runs of 94 steps: read with PreciseBN
train configs/learning_rates.yaml --set data.train_limit=3000 --set train.epochs=1 \
    --set "$SEEDS" --set "$PRECISE"
verdict learning_rates learning_rates --metric val_accuracy_precise

row bjorck2018 4   # 50 runs of 313 steps (relu): each variant at its own best learning rate
train configs/learning_rates.yaml --set name=bjorck2018 --set model.activation=relu \
    --set data.validation=0.1 --set record.test=true --set data.train_limit=10000 \
    --set train.epochs=1 --set "$SEEDS"
verdict bjorck2018 bjorck2018 --tune train.learning_rate --metric test_accuracy

row initialization 5   # 30 runs, 626 steps; eval points from step 100 (lag): PreciseBN
train configs/initialization.yaml --set data.train_limit=10000 --set "$SEEDS" --set "$PRECISE"
verdict initialization initialization

row regularization 5   # 20 runs, 940 steps; train_eval: the gap in inference mode
train configs/regularization.yaml --set data.train_limit=3000 --set train.epochs=10 \
    --set record.train_eval=3000 --set "$SEEDS" --set "$PRECISE"
verdict regularization regularization

row stability 3   # 30 runs, 314 steps; eval points from step 100 (lag): PreciseBN
train configs/stability.yaml --set data.train_limit=5000 --set train.epochs=2 \
    --set "$SEEDS" --set "$PRECISE"
verdict stability stability

row batch_size 4.5   # 50 runs; batch 256 trains 8 steps: read with PreciseBN
train configs/batch_size.yaml --set data.train_limit=1000 --set "$SEEDS" --set "$PRECISE"
verdict batch_size batch_size --metric val_accuracy_precise

row depth 3   # 40 runs of 188 steps: read with PreciseBN
train configs/depth.yaml --set data.train_limit=3000 --set "$SEEDS" --set "$PRECISE"
verdict depth depth --metric val_accuracy_precise

row fashion_cnn 3   # 10 runs of 94 steps: read with PreciseBN (the moving averages collapse here)
train configs/fashion_cnn.yaml --set data.train_limit=3000 --set train.epochs=2 \
    --set "$SEEDS" --set "$PRECISE"
verdict fashion_cnn fashion_cnn --metric val_accuracy_precise

row normalizers 10   # 105 runs of 300 steps at batch 4, 32 and 256: converged moving averages
train configs/normalizers.yaml --set train.steps=300 --set record.eval_every=300 \
    --set "$SEEDS" --set "$PRECISE"
verdict normalizers normalizers

row residual 8   # 100 runs of 314 steps: converged moving averages; residual + BN against residual
train configs/residual.yaml --set data.train_limit=5000 --set "$SEEDS" --set "$PRECISE"
verdict residual residual --baseline res_no_bn

row santurkar2018 5.5   # 15 runs of 1,000 steps with the landscape and ICS probes
train configs/santurkar2018.yaml --set train.steps=1000 --set data.train_limit=10000 \
    --set "$SEEDS" --set "$PRECISE"
verdict santurkar2018 santurkar2018

exit $status
