"""Model quality on makemore's names.txt with the lectures' split: val/test NLL and training wall time.

    .venv/bin/python bench/quality.py [--models bigram-counts bigram-neural mlp] [--threads N]

Each model is trained from scratch with the CLI's defaults (`python -m training train --model M
--data ../shared/data/names.txt`) into runs/quality-<model>, then its checkpoint's NLLs are printed
beside the lectures' figures.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from common import DATA, ROOT, RUNS, machine_line

LECTURE_VAL = {"bigram-counts": "~2.45 (lecture 1, all data)", "bigram-neural": "same as counts",
               "mlp": "2.1057 (lecture 3, BN)", "wavenet": "1.9937 (lecture 5)"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["bigram-counts", "bigram-neural", "mlp"])
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads for training")
    p.add_argument("--data", default=str(DATA))
    args = p.parse_args()
    if not os.path.isfile(args.data):
        sys.exit(f"error: {args.data} is absent")

    rows = []
    for model in args.models:
        out = RUNS / f"quality-{model}"
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        subprocess.run([sys.executable, "-m", "training", "train", "--model", model, "--data", args.data,
                        "--out", str(out), "--overwrite", "--quiet", "--no-plots"], cwd=ROOT, check=True, env=env)
        meta = json.loads((out / "checkpoint.json").read_text())
        rows.append((model, meta))

    print(machine_line("quality"))
    print(f"data {args.data}: split sizes {rows[0][1]['split']['sizes']}, torch threads {args.threads}")
    print(f"  {'model':<14} {'params':>8} {'steps':>7} {'train':>7} {'val':>7} {'test':>7} {'wall s':>8}  lecture val")
    for model, meta in rows:
        m, t = meta["metrics"], meta["training"]
        print(f"  {model:<14} {meta['parameters']:>8} {t['completed_steps']:>7} {m['train_nll']:>7.4f} "
              f"{m['val_nll']:>7.4f} {m['test_nll']:>7.4f} {t['wall_time_s']:>8.1f}  {LECTURE_VAL.get(model, '')}")
    by_model = {model: meta["metrics"]["val_nll"] for model, meta in rows}
    if {"bigram-counts", "bigram-neural"} <= by_model.keys():
        print(f"  bigram-neural - bigram-counts val: {by_model['bigram-neural'] - by_model['bigram-counts']:+.4f}")


if __name__ == "__main__":
    main()
