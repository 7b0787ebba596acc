"""Engine throughput in process: continuous batching against the lectures' sampling loop, same run.

    .venv/bin/python bench/serving_engine.py [--model mlp] [--checkpoint DIR] [--names 200000] [--threads 2]

The baseline is lecture 2's loop: one name at a time, one torch forward per character
(torch.multinomial on the softmax), on the trained model in eval mode. The engine runs the exported
ONNX model of the same checkpoint at several NAMEGEN_MAX_BATCH_ROWS settings, with the logits table
(NAMEGEN_LOGITS_TABLE_MB) where the model has one and, at the default 4096 rows, without it too.
Medians of several rounds, each round running every setting once.
"""
from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

from common import ROOT, machine_line, served_registry, trained_checkpoint

sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from serving.engine import Engine, SamplingParams  # noqa: E402
from serving.model import load_version  # noqa: E402
from namegen.contract import MAX_NAME_LENGTH, read_latest  # noqa: E402
from serving.settings import Settings  # noqa: E402
from training.checkpoint import load_checkpoint  # noqa: E402

RUNS = 5
BATCH_ROWS = (256, 1024, 4096, 16384)


@torch.no_grad()
def lecture_loop(model, names: int, seed: int) -> list[str]:
    """Lecture 2's sampler, as written there: one forward per character of one name."""
    g = torch.Generator().manual_seed(seed)
    out_names = []
    for _ in range(names):
        out, context = [], [0] * model.cfg.block_size
        while True:
            logits = model(torch.tensor([context]))
            probs = torch.softmax(logits, dim=1)
            ix = torch.multinomial(probs, num_samples=1, generator=g).item()
            context = context[1:] + [ix]
            out.append(ix)
            if ix == 0:
                break
        out_names.append(out)
    return out_names


def rate(run, count: int) -> float:
    start = time.perf_counter()
    run()
    return count / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mlp", help="model type to train and serve (default mlp)")
    p.add_argument("--checkpoint", type=Path, help="serve this checkpoint (e.g. an ensemble) instead, as --model")
    p.add_argument("--names", type=int, default=200_000, help="names per engine run")
    p.add_argument("--baseline-names", type=int, default=300, help="names per lecture-loop run")
    p.add_argument("--threads", type=int, default=2, help="engine forward threads (NAMEGEN_THREADS)")
    p.add_argument("--runs", type=int, default=RUNS, help="rounds; figures are medians over them")
    args = p.parse_args()

    checkpoint_dir = args.checkpoint or trained_checkpoint(args.model)
    registry = served_registry({args.model: checkpoint_dir})
    torch.set_num_threads(1)  # the lecture loop is one row at a time; more threads only add overhead
    model = load_checkpoint(checkpoint_dir).model.eval()

    engines = {}  # (rows, tabled) -> Engine; the last one computes every forward, if the others look up
    for rows, table_mb in [(rows, Settings().logits_table_mb) for rows in BATCH_ROWS] + [(4096, 0.0)]:
        settings = Settings(registry=registry, threads=args.threads, max_batch_rows=rows, logits_table_mb=table_mb)
        loaded = load_version(settings, args.model, read_latest(registry, args.model))
        tabled = loaded.runner.table is not None
        if (rows, tabled) in engines:  # no table to turn off: nothing to compare
            loaded.close()
            continue
        engines[rows, tabled] = Engine(loaded, rows, max_queue=16, max_name_length=MAX_NAME_LENGTH,
                                       attempts_per_name=20)
        engines[rows, tabled].generate(SamplingParams(n=2000, seed=0))  # warm-up
    gc.freeze()  # as the server does once its models are loaded (serving/app.py)

    # Rounds interleave every setting, so drift in this shared machine's speed hits them alike.
    rates: dict = {"lecture": []}
    for i in range(args.runs):
        rates["lecture"].append(rate(lambda: lecture_loop(model, args.baseline_names, i), args.baseline_names))
        for key, engine in engines.items():
            rates.setdefault(key, []).append(
                rate(lambda: engine.generate(SamplingParams(n=args.names, seed=i + 1)), args.names))
    for engine in engines.values():
        engine.stop()
        engine.model.close()

    print(machine_line("serving_engine"))
    meta = load_checkpoint(checkpoint_dir).meta
    print(f"model {args.model}: {meta['parameters']} params, block_size {meta['block_size']}, "
          f"val NLL {meta['metrics']['val_nll']:.4f}; engine threads {args.threads}, onnxruntime, "
          f"medians (min-max) of {args.runs} interleaved rounds, {args.names:,} names per engine run")
    baseline = statistics.median(rates["lecture"])
    print(f"  lecture loop (torch, 1 name at a time): {baseline:>12,.0f} names/s "
          f"({min(rates['lecture']):,.0f}-{max(rates['lecture']):,.0f})")
    for (rows, tabled), values in ((key, v) for key, v in rates.items() if key != "lecture"):
        median = statistics.median(values)
        table = "logits table" if tabled else "computed    "
        print(f"  engine, max_batch_rows {rows:>6}, {table}: {median:>12,.0f} names/s  {median / baseline:>7.0f}x "
              f"({min(values):,.0f}-{max(values):,.0f})")


if __name__ == "__main__":
    main()
