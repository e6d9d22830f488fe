"""The origin notebook's plain Keras against `bncompare run configs/mnist.yaml`, back to back.

    python benchmarks/vs_notebook.py [--epochs 5] [--repeat 1] [--set KEY=VALUE ...]

Same data (MNIST from $BNCOMPARE_DATA_DIR), same models, 5 epochs at batch 32. Reports wall time
of each whole process (start-up and data loading included), its ratio, training seconds per epoch
per model, CPU seconds, peak RSS of each child process, and both models' final validation accuracy.
Timings on a shared machine are noisy: the load is printed with each pair; repeat and compare.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import ROOT, data_dir, load, measure  # noqa: E402


def notebook(epochs: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        result_file = Path(tmp) / "result.json"
        measured = measure([sys.executable, str(ROOT / "benchmarks" / "notebook.py"), str(epochs)],
                           env={"BENCH_RESULT": str(result_file), "BNCOMPARE_DATA_DIR": data_dir()})
        runs = json.loads(result_file.read_text())
    return {**measured, "runs": runs}


def bncompare(epochs: int, overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as out:
        argv = [sys.executable, "-m", "bncompare", "run", str(ROOT / "configs" / "mnist.yaml"),
                "--out", out, "--force", "--quiet", "--set", f"train.epochs={epochs}"]
        for override in overrides:
            argv += ["--set", override]
        measured = measure(argv, env={"BNCOMPARE_DATA_DIR": data_dir()})
        runs = {}
        for path in Path(out).glob("mnist/*/metrics.json"):
            metrics = json.loads(path.read_text())
            runs[metrics["variant"]] = {"seconds": metrics["final"]["train_seconds"],
                                        "val_accuracy": metrics["final"]["val_accuracy"]}
    return {**measured, "runs": runs}


def row(name: str, m: dict, epochs: int) -> str:
    per_epoch = " / ".join(f"{m['runs'][v]['seconds'] / epochs:.2f}" for v in ("no_bn", "bn"))
    accuracy = " / ".join(f"{m['runs'][v]['val_accuracy']:.4f}" for v in ("no_bn", "bn"))
    return (f"| {name} | {m['wall_s']:.1f} | {m['cpu_s']:.1f} | {per_epoch} | {m['peak_rss_mb']:.0f} "
            f"| {accuracy} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="extra --set for bncompare, e.g. train.pack=off")
    args = parser.parse_args()
    print("| process | wall s | CPU s | train s/epoch (no_bn / bn) | peak RSS MB | val_acc (no_bn / bn) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for _ in range(args.repeat):
        before = load()
        a = notebook(args.epochs)
        b = bncompare(args.epochs, args.overrides)
        print(row("notebook (plain Keras)", a, args.epochs))
        print(row("bncompare run" + "".join(f" --set {o}" for o in args.overrides), b, args.epochs))
        print(f"| ratio bncompare / notebook | {b['wall_s'] / a['wall_s']:.2f}x | "
              f"{b['cpu_s'] / a['cpu_s']:.2f}x | | | | ({before} before, {load()} after)", flush=True)


if __name__ == "__main__":
    main()
