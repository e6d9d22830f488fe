#!/usr/bin/env bash
# The GPU figures of the README, in one call on a lent GPU machine (JAX with CUDA, no TensorFlow):
#   bash ../shared/gpu/prepare.sh      # here: Keras wheels and the data into .device/
#   bash .device/on_device.sh bash benchmarks/gpu_check.sh OUT_DIR     # there
# Writes OUT_DIR/gpu.log (everything printed) and OUT_DIR/results.tgz (every metrics.json).
# To rehearse on a CPU: DEVICE=cpu SET="--set data.train_limit=300" MEMBERS="1 4" LIMIT=600 bash ...
set -u
device=${DEVICE:-gpu}; members=${MEMBERS:-1 16 256}
# shellcheck disable=SC2206
extra=(${SET:-})
out=${1:?usage: gpu_check.sh OUT_DIR}
mkdir -p "$out"
exec > >(tee "$out/gpu.log") 2>&1
run() { local s e; s=$(date +%s.%N); "$@"; local rc=$?; e=$(date +%s.%N)
        python3 -c "import sys; print(f'== wall {float(sys.argv[2]) - float(sys.argv[1]):.1f} s, exit {sys.argv[3]}: ' + ' '.join(sys.argv[4:]))" "$s" "$e" "$rc" "$@"; }
bnc() { run python3 -m bncompare run "$@" "${extra[@]}" --backend jax --device "$device" --quiet; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 -c "import jax, keras; print('jax', jax.__version__, jax.devices(), 'keras', keras.__version__)"
# 1. The origin comparison (2 runs x 5 epochs): vmap engine (default on JAX), then fit (pack off).
bnc configs/mnist.yaml --out "$out/r/vmap"
bnc configs/mnist.yaml --out "$out/r/fit" --set train.pack=off --set train.epochs=1
# 2. The learning-rate sweep in full: 60 runs x 2 epochs (goal: under 60 s wall, start-up included).
bnc configs/learning_rates.yaml --out "$out/r/lr"
# 3. Member-epochs per second at 1, 16 and 256 members (origin MLP, batch 32), against fit.
# shellcheck disable=SC2086
run python3 benchmarks/vmap_sweep.py --device "$device" --members $members --baseline-runs 2 \
    ${LIMIT:+--train-limit "$LIMIT"}
# Seconds per epoch per run, and what the sweep learned.
python3 - "$out/r" <<'PY'
import json, pathlib, sys
for name in ("vmap", "fit", "lr"):
    rows = [json.loads(p.read_text()) for p in pathlib.Path(sys.argv[1], name).glob("*/*/metrics.json")]
    if not rows:
        continue
    statuses = {}
    for m in rows:
        statuses[m["status"]] = statuses.get(m["status"], 0) + 1
    per_epoch = [m["final"]["train_seconds"] / m["history"]["epoch"][-1] for m in rows
                 if m["status"] == "completed" and m["history"]["epoch"]]
    engines = sorted({f'{m["engine"]["name"]} x{m["engine"]["members"]}' for m in rows})
    print(f"{name}: {len(rows)} runs {statuses}, engines {engines}, training seconds per epoch per "
          f"group {min(per_epoch):.3f}-{max(per_epoch):.3f}" if per_epoch else f"{name}: {statuses}")
    for m in sorted(rows, key=lambda m: m["run_id"])[:4]:
        print("  ", m["run_id"], m["status"], m["final"].get("val_accuracy"), m["final"].get("compile_seconds"))
PY
tar czf "$out/results.tgz" -C "$out" r
