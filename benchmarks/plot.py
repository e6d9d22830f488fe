"""Time `bncompare plot` on 1,000 runs: synthetic metrics files written through MetricsFile.

    python benchmarks/plot.py [--runs 1000] [--epochs 20]

The runs form one experiment: 2 variants x 50 learning rates x 10 seeds, 20 eval points each, a few
diverged, so every plot kind (curves with bands, the sweep plot) is drawn.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import load, measure  # noqa: E402

from bncompare.results import MetricsFile  # noqa: E402


def write_runs(root: Path, runs: int, epochs: int) -> None:
    rng = random.Random(0)
    rates = [10 ** (-4 + 4 * i / 49) for i in range(50)]
    environment = {"bncompare": "bench", "backend": "tensorflow", "device": "CPU"}
    for i in range(runs):
        variant, rate, seed = ("no_bn", "bn")[i % 2], rates[(i // 2) % 50], i // 100
        run_id = f"{variant}-lr{rate:.3g}-s{seed}-{i:06x}"
        params = {"model.batch_norm": variant == "bn", "train.learning_rate": rate, "train.seed": seed}
        (root / "bench" / run_id).mkdir(parents=True)
        metrics = MetricsFile(root / "bench" / run_id, experiment="bench", run_id=run_id,
                              variant=variant, params=params, environment=environment)
        diverged = rate > 0.5 and variant == "no_bn" and rng.random() < 0.5
        for epoch in range(1, epochs + 1):
            accuracy = 0.98 - 0.5 * math.exp(-epoch / 3) - rng.random() * 0.01
            metrics.data["history"]["epoch"].append(epoch)  # no fsync per point: set-up only
            for key, value in (("step", epoch * 1875), ("loss", 1 - accuracy), ("accuracy", accuracy),
                               ("val_loss", 1.05 - accuracy), ("val_accuracy", accuracy - 0.005),
                               ("seconds", epoch * 1.0)):
                metrics.data["history"][key].append(value)
            if diverged and epoch == 3:
                break
        metrics.finish("diverged" if diverged else "completed",
                       diverged_at={"epoch": 3, "step": 5625} if diverged else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "results"
        write_runs(root, args.runs, args.epochs)
        before = load()
        m = measure([sys.executable, "-m", "bncompare", "plot", str(root), "--out", str(Path(tmp) / "plots")])
        figures = sorted(p.name for p in (Path(tmp) / "plots").rglob("*") if p.is_file())
    print(f"bncompare plot, {args.runs} runs x {args.epochs} eval points: wall {m['wall_s']:.1f} s, "
          f"CPU {m['cpu_s']:.1f} s, peak RSS {m['peak_rss_mb']:.0f} MB, {len(figures)} files "
          f"({before} before, {load()} after)")


if __name__ == "__main__":
    main()
