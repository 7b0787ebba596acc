"""What lecture 3's diagnostics cost: the default mlp trained with them on (every 100 steps) and off.

    OMP_NUM_THREADS=1 .venv/bin/python bench/training_diagnostics.py [--steps 30000] [--rounds 3]

Each round trains once with diagnostics and once without, in alternating order, with the CLI's mlp
defaults (--steps scales the schedule, evaluations and checkpoints with it), on ../shared/data/names.txt
when present, else the SSA default. Times are whole `train()` calls, the training time a user sees:
steps, ten evaluations (train, val and test NLL each), checkpoint writes. Medians over the rounds. The
evaluations cost the same in both modes, so the overhead is also given against the steps alone: the
whole call less the evaluations' time, measured once by running the same NLLs on their own.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from common import DATA, ROOT, machine_line

sys.path.insert(0, str(ROOT))
from training.data import Dataset, load_words  # noqa: E402
from training.diagnostics import is_recording_step  # noqa: E402
from training.models import ModelConfig, build_model, nll  # noqa: E402
from training.train import TRAIN_DEFAULTS, train  # noqa: E402


def timed_run(data: Dataset, steps: int, diagnostics_every: int, out: Path) -> float:
    tc = replace(TRAIN_DEFAULTS["mlp"], steps=steps, diagnostics_every=diagnostics_every)
    start = time.perf_counter()
    train(ModelConfig("mlp", data.vocab.size), tc, data, out, progress=False)
    return time.perf_counter() - start


def evaluation_seconds(data: Dataset, steps: int) -> float:
    """What a run spends besides its steps: at each mid-run evaluation and at the end, the val NLL and a
    checkpoint with all three splits' NLLs (contexts rebuilt each time, as train() does)."""
    interval = replace(TRAIN_DEFAULTS["mlp"], steps=steps).eval_interval
    evaluations = len(range(interval, steps, interval)) + 1
    model = build_model(ModelConfig("mlp", data.vocab.size))
    start = time.perf_counter()
    for part in ("val", "train", "val", "test"):
        nll(model, *data.contexts(part, model.cfg.block_size))
    return (time.perf_counter() - start) * evaluations


def cpu_model() -> str:
    """machine_line names the architecture; the model name says which CPU the figure is from."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "unknown CPU model"
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown CPU model")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    words, source = load_words(str(DATA) if DATA.is_file() else None)
    data = Dataset.from_words(words, source)
    every = TRAIN_DEFAULTS["mlp"].diagnostics_every

    times: dict[str, list[float]] = {"on": [], "off": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            order = ("on", "off") if i % 2 == 0 else ("off", "on")  # drift on a shared machine hits both alike
            for mode in order:
                seconds = timed_run(data, args.steps, every if mode == "on" else 0, Path(tmp) / f"{mode}{i}")
                times[mode].append(seconds)
                print(f"round {i + 1} diagnostics {mode:<3} {seconds:7.2f} s", file=sys.stderr)

    on, off = statistics.median(times["on"]), statistics.median(times["off"])
    evaluations = statistics.median(evaluation_seconds(data, args.steps) for _ in range(3))
    records = sum(is_recording_step(step, every, args.steps - 1) for step in range(args.steps))
    print(f"{machine_line('training_diagnostics')}  {cpu_model()}")
    print(f"data {source}: default mlp, {args.steps} steps x {args.rounds} interleaved rounds, "
          f"torch threads {args.threads}, diagnostics every {every} steps ({records} records a run)")
    print(f"  diagnostics off  median {off:7.2f} s  (min {min(times['off']):.2f}, max {max(times['off']):.2f})")
    print(f"  diagnostics on   median {on:7.2f} s  (min {min(times['on']):.2f}, max {max(times['on']):.2f})")
    print(f"  on / off = {on / off:.4f}: overhead {100 * (on / off - 1):+.2f}% of the training time "
          f"({1000 * (on - off) / records:+.2f} ms a record)")
    print(f"  against the steps alone (less {evaluations:.2f} s of evaluations a run): "
          f"{100 * (on - off) / (off - evaluations):+.2f}%")


if __name__ == "__main__":
    main()
