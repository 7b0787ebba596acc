"""Wavenets served three ways, in process: as exported before pair tables, with levels 1-2 tabled, and with
the step model (block 16 and up), for each wavenet `make best` publishes and any checkpoint added.

    .venv/bin/python bench/serving_steps.py [--registry registry] [--models wavenet-distilled,wavenet-ensemble]
                                            [--add NAME=CHECKPOINT ...] [--names 50000] [--threads 2] [--runs 3]

Same engine settings for every variant (4096 rows, NAMEGEN_THREADS): names/s and µs per row-step (wall time
over rows stepped), medians of interleaved rounds; the multiply-adds per row-step of each variant, counted
from the model's shapes; and ONNX Runtime's own rate for the same work (the backend's fixed-shape chunks
on the same threads, no sampling or bookkeeping), so the engine's share of it says what the rest costs.
The baseline of each model ("untabled") is its checkpoint exported as before this change
(export_checkpoint(tables=False)) into runs/bench-steps-registry, as are the --add checkpoints.
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

from common import ROOT, RUNS, machine_line

sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from namegen.contract import MAX_NAME_LENGTH, read_latest  # noqa: E402
from serving.engine import Engine, SamplingParams  # noqa: E402
from serving.model import load_version  # noqa: E402
from serving.settings import Settings  # noqa: E402

ROWS = 4096


def multiply_adds(manifest: dict) -> dict[str, int]:
    """Multiply-adds per row-step of each variant, from the members' shapes in the checkpoint's config."""
    config = json.loads((Path(manifest["checkpoint"]) / "checkpoint.json").read_text())["model_config"]
    counts = {"untabled": 0, "tabled": 0, "step": 0}
    for m in config["members"] or [config]:
        levels, e, h, v = m["block_size"].bit_length() - 1, m["n_embd"], m["n_hidden"], m["vocab_size"]
        widths = [(m.get("n_hidden_first") or h) if levels > 1 else h] + [h] * (levels - 1)  # level 1 may be wider
        for level, width in enumerate(widths):
            nodes, fan_in = m["block_size"] >> (level + 1), 2 * (e if level == 0 else widths[level - 1])
            counts["untabled"] += nodes * fan_in * width
            counts["tabled"] += nodes * fan_in * width if level >= 2 else 0  # levels 1-2: table lookups
            counts["step"] += fan_in * width if level >= 2 else 0  # the newest node of each level only
        for variant in counts:
            counts[variant] += h * v
    return counts


def engine_for(registry: Path, name: str, step_cache: bool, threads: int) -> Engine:
    if read_latest(registry, name) is None:
        sys.exit(f"error: no {name} in {registry}; publish it first: make best DATA=../shared/data/names.txt")
    settings = Settings(registry=registry, threads=threads, max_batch_rows=ROWS, step_cache=step_cache)
    model = load_version(settings, name, read_latest(registry, name))
    if step_cache and model.runner.steps is None:
        sys.exit(f"error: {name} has no usable step model (exported before step models, or not a wavenet)")
    engine = Engine(model, ROWS, max_queue=16, max_name_length=MAX_NAME_LENGTH, attempts_per_name=20)
    engine.generate(SamplingParams(n=2000, seed=0))  # warm-up
    return engine


def onnxruntime_rate(engine: Engine, seconds: float = 1.0) -> float:
    """Rows per second through the backend's chunks on its threads: the forward (or step) alone."""
    runner, rows = engine.runner, ROWS
    context = np.random.default_rng(0).integers(1, engine.model.vocab_size, (rows, engine.model.block_size))
    position = np.arange(rows, dtype=np.int64) % 16
    caches = engine.runner.step_caches(rows)
    if caches is not None:
        caches.reset(slice(None))
        run = lambda: runner.steps.step_map(context, position, caches, lambda r, logits: None)  # noqa: E731
    else:
        run = lambda: runner.backend.forward(context)  # noqa: E731
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        run()
        done += rows
    return done / (time.perf_counter() - start)


def measure(engine: Engine, names: int, seed: int) -> tuple[float, float]:
    """(names/s, µs per row-step) of one request for `names` names."""
    stepped = [0]
    engine.on_step = lambda rows: stepped.__setitem__(0, stepped[0] + rows)
    start = time.perf_counter()
    engine.generate(SamplingParams(n=names, seed=seed))
    elapsed = time.perf_counter() - start
    return names / elapsed, elapsed / stepped[0] * 1e6


def publish(registry: Path, models: list[str], added: list[str]) -> dict[str, tuple[Path, str, bool]]:
    """variant label -> (registry, name, step cache): each model as published, its untabled baseline, and
    its step model where it has one."""
    from export.pipeline import export_checkpoint

    bench = RUNS / "bench-steps-registry"
    for pair in added:
        name, checkpoint = pair.split("=", 1)
        export_checkpoint(checkpoint, bench, name=name, keep=1)
        models.append(name)
    variants = {}
    for name in models:
        home = bench if any(pair.startswith(name + "=") for pair in added) else registry
        version = read_latest(home, name)
        if version is None:
            sys.exit(f"error: no {name} in {home}; publish it first: make best DATA=../shared/data/names.txt")
        manifest = json.loads((home / name / version / "manifest.json").read_text())
        export_checkpoint(manifest["checkpoint"], bench, name=f"{name}-untabled", keep=1, tables=False)
        variants[name, "untabled"] = (bench, f"{name}-untabled", False)
        variants[name, "tabled"] = (home, name, False)
        if "step_model" in manifest:
            variants[name, "step"] = (home, name, True)
    return variants


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--registry", type=Path, default=ROOT / "registry")
    p.add_argument("--models", default="wavenet-distilled,wavenet-ensemble")
    p.add_argument("--add", action="append", default=[], help="NAME=CHECKPOINT: also this checkpoint")
    p.add_argument("--names", type=int, default=50_000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    variants = publish(args.registry, [m for m in args.models.split(",") if m], args.add)
    engines = {key: engine_for(registry, name, cached, args.threads)
               for key, (registry, name, cached) in variants.items()}
    gc.freeze()
    figures: dict = {key: [] for key in engines}
    raw: dict = {key: [] for key in engines}
    for i in range(args.runs):  # interleaved: drift on this shared machine hits every setting alike
        for key, engine in engines.items():
            figures[key].append(measure(engine, args.names, i + 1))
            raw[key].append(onnxruntime_rate(engine))
    report(engines, figures, {key: statistics.median(values) for key, values in raw.items()}, args)
    for engine in engines.values():
        engine.stop()
        engine.model.close()


def report(engines: dict, figures: dict, raw: dict, args) -> None:
    print(machine_line("serving_steps"))
    print(f"engine: {ROWS} rows, {args.threads} threads, onnxruntime; medians of {args.runs} interleaved rounds, "
          f"{args.names:,} names per run; ratios against the model's untabled export, same run")
    rate = {key: statistics.median(r for r, _ in values) for key, values in figures.items()}
    for name in dict.fromkeys(name for name, _ in engines):
        manifest = engines[name, "tabled"].model.manifest.raw
        macs = multiply_adds(manifest)
        print(f"{name} (val {manifest['metrics']['val_nll']:.4f}, test {manifest['metrics']['test_nll']:.4f}, "
              f"{manifest['parameters']:,} params, block {manifest['block_size']}):")
        for variant in ("untabled", "tabled", "step"):
            if (name, variant) not in engines:
                continue
            per_row = statistics.median(us for _, us in figures[name, variant])
            print(f"  {variant:>8}: {rate[name, variant]:>9,.0f} names/s ({rate[name, variant] / rate[name, 'untabled']:.2f}x)"
                  f"  {per_row:.3f} µs/row-step  {macs[variant]:>7,} MACs/row-step  onnxruntime alone "
                  f"{raw[name, variant]:>10,.0f} rows/s, engine at {1e6 / per_row / raw[name, variant]:.0%} of it")
    if ("wavenet-distilled", "tabled") in rate and ("wavenet-ensemble", "untabled") in rate:
        print(f"wavenet-distilled (tabled) against wavenet-ensemble as exported before: "
              f"{rate['wavenet-distilled', 'tabled'] / rate['wavenet-ensemble', 'untabled']:.2f}x names/s")


if __name__ == "__main__":
    main()
