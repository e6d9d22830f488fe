"""A 16-run learning-rate x BN sweep on MNIST at batch 32: the default against one run at a time.

    python benchmarks/sweep.py [--epochs 1] [--train-limit N] [--repeat 1]

Both sides are one `bncompare run` of the origin config with 8 learning rates x {no_bn, bn};
"one at a time" adds `--set train.pack=off --jobs 1` (every run alone through `fit`, in one
process; every other fast path stays on), the default packs runs and uses every core (`--jobs
auto`). Reports wall and CPU seconds of each process, the speed-up, and the default's training
arithmetic against this machine's measured float32 matmul peak.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import ROOT, data_dir, load, matmul_peak, measure  # noqa: E402

RATES = "[0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3]"
LAYERS = (784, 256, 128, 10)  # the origin MLP


def sweep(epochs: int, limit: int | None, pack: bool) -> dict:
    with tempfile.TemporaryDirectory() as out:
        argv = [sys.executable, "-m", "bncompare", "run", str(ROOT / "configs" / "mnist.yaml"),
                "--out", out, "--force", "--quiet", "--set", f"train.epochs={epochs}",
                "--set", f"sweep.train.learning_rate={RATES}"]
        if limit:
            argv += ["--set", f"data.train_limit={limit}"]
        if not pack:
            argv += ["--set", "train.pack=off", "--jobs", "1"]
        measured = measure(argv, env={"BNCOMPARE_DATA_DIR": data_dir()})
        runs = [json.loads(p.read_text()) for p in Path(out).glob("mnist/*/metrics.json")]
    assert len(runs) == 16, len(runs)
    measured["train_s"] = max(r["final"]["train_seconds"] or 0 for r in runs) if pack else sum(
        r["final"]["train_seconds"] or 0 for r in runs)
    measured["statuses"] = sorted(r["status"] for r in runs)
    measured["steps"] = sum(r["history"]["step"][-1] if r["history"]["step"] else 0 for r in runs)
    return measured


def flops_per_step(batch: int = 32) -> float:
    """Forward + backward matmul FLOPs of one step of the origin MLP (3 matmuls per layer)."""
    return sum(3 * 2 * batch * a * b for a, b in zip(LAYERS, LAYERS[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train-limit", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    peak = matmul_peak()
    print(f"float32 matmul peak (NumPy 2048^2): {peak:.0f} GFLOP/s")
    print("| sweep (16 runs) | wall s | CPU s | training s | GFLOP/s | % of peak | statuses |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for _ in range(args.repeat):
        before = load()
        sequential = sweep(args.epochs, args.train_limit, pack=False)
        packed = sweep(args.epochs, args.train_limit, pack=True)
        for name, m in (("one at a time (pack: off, --jobs 1)", sequential),
                        ("default (pack: auto, --jobs auto)", packed)):
            # Steps that ran (diverged members stop early), at the origin MLP's FLOPs per step.
            rate = m["steps"] * flops_per_step() / m["train_s"] / 1e9
            counts = {s: m["statuses"].count(s) for s in sorted(set(m["statuses"]))}
            print(f"| {name} | {m['wall_s']:.1f} | {m['cpu_s']:.1f} | {m['train_s']:.1f} | {rate:.1f} "
                  f"| {100 * rate / peak:.0f}% | {counts} |")
        print(f"| speed-up of the default | {sequential['wall_s'] / packed['wall_s']:.2f}x | "
              f"{sequential['cpu_s'] / packed['cpu_s']:.2f}x | "
              f"{sequential['train_s'] / packed['train_s']:.2f}x | | | ({before} before, {load()} after) |",
              flush=True)


if __name__ == "__main__":
    main()
