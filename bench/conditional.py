"""Conditional models on the SSA records: what conditioning on sex and decade buys, and what it costs.

    .venv/bin/python bench/conditional.py [--model mlp] [--steps 30000] [--years 1880-2017] [--runs 3]
        [--n-embd E] [--n-hidden H] [--condition-dropout 0.2] [--condition-dropout-all 0] [--guidance 0,2]
        [--temperatures 1,0.5] [--finetune STEPS] [--explain-weight 1]

Trains two models of the type --model (the mlp or the wavenet; CLI defaults but for the sizes given) on the
same records (one per distinct name, sex and decade of the years) and the same split: one with
`--condition sex,decade`, one without; with --finetune, each then fine-tuned as many more steps, the
conditional one with explain's loss on sex (training/finetune.py). Then, through the exported models and
the serving engine:
  - val NLL: conditional (true conditions), unconditional, and with both conditions left out: the exact
    marginal over the training prior (what serving answers) and the learned "any" index;
  - at each --guidance scale: of 2,000 seeded names for sex F and 2,000 for M, the real SSA names among
    them, and how many of those were mostly given to the asked sex; names generated for the 1920s and for
    the 2010s (at each --temperatures), and how often each lands in the SSA top 1,000 (per sex, of the
    decade's summed counts) of either decade, beside the same rates for the records themselves and for the
    babies (records weighted by births);
  - score explain on the test records: the sex of those whose name went to one sex only in that decade
    (with nothing given, and with the record's decade given), of all of them, and the decade within one;
  - engine throughput (names/s) of the conditional model, any and mixed conditions, against the
    unconditional one, interleaved rounds, medians.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections import defaultdict

from common import ROOT, RUNS, machine_line, served_registry

sys.path.insert(0, str(ROOT))

from namegen.contract import MAX_NAME_LENGTH, read_latest  # noqa: E402
from serving.conditions import explain  # noqa: E402
from serving.engine import Engine, SamplingParams  # noqa: E402
from serving.model import load_version  # noqa: E402
from serving.settings import Settings  # noqa: E402
from training.checkpoint import load_checkpoint  # noqa: E402
from training.conditions import marginal_val_nll, ssa_decade_counts, val_nll_by_condition  # noqa: E402
from training.models import nll  # noqa: E402

GENERATED = 2000
TOP = 1000
COMMON = 1000  # births over the years: a name this common has a sex that means something


def train_pair(model: str, steps: int, years: str, sizes: dict, dropout: tuple[float, float]) -> dict[str, object]:
    """runs/bench-conditional[-MODEL][-SIZES]-{cond[-DROPOUTS],plain}: trained side by side, one core each;
    reused once finished with the same recipe."""
    stem = "bench-conditional" + (f"-{model}" if model != "mlp" else "") + \
        "".join(f"-{key[2]}{value}" for key, value in sizes.items() if value)  # e.g. -e32-h256
    tag = "" if dropout == (0.2, 0.0) else f"-d{dropout[0]:g}-a{dropout[1]:g}"
    outs = {"conditional": RUNS / f"{stem}-cond{tag}", "records": RUNS / f"{stem}-plain"}
    size_args = [arg for key, value in sizes.items() if value for arg in (f"--{key.replace('_', '-')}", str(value))]
    extra = {"conditional": ["--condition", "sex,decade", "--condition-dropout", str(dropout[0]),
                             "--condition-dropout-all", str(dropout[1])], "records": []}
    running = []
    for name, out in outs.items():
        meta = out / "checkpoint.json"
        done = json.loads(meta.read_text()) if meta.is_file() else None
        recipe = {key: value for key, value in sizes.items() if value}
        if name == "conditional":
            recipe.update(condition_dropout=dropout[0], condition_dropout_all=dropout[1])
        if done and done["model_type"] == model and done["training"].get("steps") == steps and \
                done["training"]["finished"] and all(done["model_config"].get(k, 0.0) == v for k, v in recipe.items()):
            print(f"reusing {out} (delete it to train again)", file=sys.stderr)
            continue
        command = [sys.executable, "-m", "training", "train", "--model", model, "--years", years, *extra[name],
                   *size_args, "--steps", str(steps), "--eval-every", str(steps), "--out", str(out), "--overwrite",
                   "--no-plots", "--quiet"]
        running.append(subprocess.Popen(command, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}))
    if any(p.wait() for p in running):
        sys.exit("error: training failed")
    return outs


def finetune_pair(paths: dict, steps: int, explain_weight: float) -> dict[str, object]:
    """Each of the pair fine-tuned `steps` more steps (python -m training finetune, its default learning rate),
    the conditional one with explain's loss on sex unless explain_weight is 0; side by side, one core each;
    reused once finished."""
    outs = {name: path.with_name(f"{path.name}-ft{steps}" + (f"-x{explain_weight:g}" if name == "conditional" and
                                                             explain_weight else ""))
            for name, path in paths.items()}
    running = []
    for name, out in outs.items():
        meta = out / "checkpoint.json"
        done = json.loads(meta.read_text())["training"] if meta.is_file() else None
        if done and done["finished"] and done["steps"] == steps and \
                done["finetune"]["init_sha256"] == json.loads((paths[name] / "checkpoint.json").read_text())["data"]["sha256"]:
            print(f"reusing {out} (delete it to fine-tune again)", file=sys.stderr)
            continue
        explain = ["--explain", "sex", "--explain-weight", str(explain_weight)] \
            if name == "conditional" and explain_weight else []
        command = [sys.executable, "-m", "training", "finetune", str(paths[name]), *explain, "--steps", str(steps),
                   "--out", str(out), "--overwrite", "--no-plots", "--quiet"]
        running.append(subprocess.Popen(command, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}))
    if any(p.wait() for p in running):
        sys.exit("error: fine-tuning failed")
    return outs


def ssa_counts(first: int, last: int):
    """(name -> {sex: count}, decade -> its top names of each sex, (name, decade) -> sexes, decade -> its
    records' (name, births)) over the years."""
    by_sex, top, sexes = defaultdict(lambda: defaultdict(int)), defaultdict(set), defaultdict(set)
    records = defaultdict(list)
    ranked = defaultdict(int)  # (decade, sex) -> names taken so far: records come by count, descending
    for row in ssa_decade_counts(first, last):
        name, decade, sex = row["name"], row["decade"], row["sex"]
        by_sex[name][sex] += row["n_sum"]
        sexes[name, str(decade)].add(sex)
        records[decade].append((name, row["n_sum"]))
        if ranked[decade, sex] < TOP:
            top[decade].add(name)
            ranked[decade, sex] += 1
    return by_sex, top, sexes, records


def nll_figures(paths: dict) -> dict:
    cond, plain = load_checkpoint(paths["conditional"]), load_checkpoint(paths["records"])
    data = cond.dataset()
    by_condition = dict(val_nll_by_condition(cond.model, data, cond.block_size))
    X, Y = data.contexts("val", cond.block_size)
    plain_val = nll(plain.model, X[:, : cond.block_size], Y)
    mixture = marginal_val_nll(cond.model, data, cond.block_size, cond.meta["condition_prior"])
    return {"conditional": nll(cond.model, X, Y), "any": by_condition["any"], "unconditional": plain_val,
            "mixture": mixture,
            "records": len(data.words), "split": data.split.sizes(), "by_condition": by_condition, "data": data}


def generate(engine: Engine, conditions: tuple, seed: int, guidance: float, temperature: float = 1.0) -> list[str]:
    return engine.generate(SamplingParams(n=GENERATED, seed=seed, conditions=conditions, guidance=guidance,
                                          temperature=temperature)).names


def record_ceiling(by_sex, sexes, sex: str, other: str) -> float:
    """Of the records (name, decade) of `sex` the model is trained on, the share whose name was mostly given to
    `sex`: what a model that samples its training records exactly would score on the sex target."""
    names = [name for (name, _), given in sexes.items() if sex in given]
    return sum(by_sex[n][sex] > by_sex[n][other] for n in names) / len(names)


def sex_figures(engine: Engine, by_sex, sexes, guidance: float) -> list[str]:
    lines = []
    for sex, other in (("F", "M"), ("M", "F")):
        names = generate(engine, (("sex", sex),), seed=1, guidance=guidance)
        real = [n for n in names if n in by_sex]
        mostly = sum(by_sex[n][sex] > by_sex[n][other] for n in real)
        # Rare names (a handful of babies in 138 years) are most of the real names hit; their sex is noise.
        common = [n for n in real if by_sex[n][sex] + by_sex[n][other] >= COMMON]
        common_mostly = sum(by_sex[n][sex] > by_sex[n][other] for n in common)
        lines.append(f"  sex {sex}: {len(real)} of {GENERATED} generated names are SSA names; {mostly} of them "
                     f"({mostly / max(len(real), 1):.1%}) were mostly given to {sex}; of the {len(common)} given to "
                     f"at least {COMMON:,} babies, {common_mostly} ({common_mostly / max(len(common), 1):.1%}); "
                     f"ceiling (its training records): {record_ceiling(by_sex, sexes, sex, other):.1%}")
    return lines


def decade_figures(engine: Engine, top, guidance: float, temperature: float) -> list[str]:
    generated = {decade: generate(engine, (("decade", str(decade)),), 2, guidance, temperature)
                 for decade in (1920, 2010)}
    rates = {(asked, target): sum(n in top[target] for n in names) / GENERATED
             for asked, names in generated.items() for target in (1920, 2010)}
    return [f"  temperature {temperature:g}: in the SSA top {TOP} (per sex) of the 1920s, names generated for 1920 "
            f"{rates[1920, 1920]:.1%}, for 2010 {rates[2010, 1920]:.1%}; of the 2010s, for 2010 "
            f"{rates[2010, 2010]:.1%}, for 1920 {rates[1920, 2010]:.1%}"]


def decade_ceiling(records: dict, top) -> list[str]:
    """The same rates for a model that samples its training records exactly (each decade's records), and for
    one that samples babies (records weighted by births): how far each target can go on these records."""
    lines = []
    for label, weight in (("the records themselves", lambda births: 1), ("the babies (records by births)", float)):
        rates = {}
        for asked in (1920, 2010):
            total = sum(weight(births) for _, births in records[asked])
            for target in (1920, 2010):
                rates[asked, target] = sum(weight(b) for n, b in records[asked] if n in top[target]) / total
        lines.append(f"  {label}: in the top {TOP} of the 1920s, those of the 1920s {rates[1920, 1920]:.1%}, "
                     f"of the 2010s {rates[2010, 1920]:.1%}; of the 2010s, those of the 2010s {rates[2010, 2010]:.1%}, "
                     f"of the 1920s {rates[1920, 2010]:.1%}")
    return lines


def explain_figures(model, data, sexes) -> list[str]:
    """score explain on every test record: sex right (single-sex name-decades, all), decade within one."""
    words, labels = data.split.test, data.label_split["test"]
    distinct = sorted(set(words))
    guesses = {}
    for i in range(0, len(distinct), 500):
        chunk = distinct[i:i + 500]
        guesses.update(zip(chunk, (r["most_likely"] for r in explain(model, chunk, (0, 0)))))
    decades = dict(model.conditions)["decade"]
    given = {}  # (name, decade) -> the likeliest sex with the record's decade given in the request
    for decade in sorted({d for _, d in labels}):
        names = sorted({w for w, (_, d) in zip(words, labels) if d == decade})
        for i in range(0, len(names), 500):
            chunk = names[i:i + 500]
            given.update(((w, decade), r["most_likely"]["sex"])
                         for w, r in zip(chunk, explain(model, chunk, (0, decades.index(decade) + 1))))
    single = [(w, sex, decade) for w, (sex, decade) in zip(words, labels) if len(sexes[w, decade]) == 1]
    single_right = sum(guesses[w]["sex"] == sex for w, sex, _ in single)
    single_given = sum(given[w, decade] == sex for w, sex, decade in single)
    all_right = sum(guesses[w]["sex"] == sex for w, (sex, _) in zip(words, labels))
    near = sum(abs(int(guesses[w]["decade"]) - int(decade)) <= 10 for w, (_, decade) in zip(words, labels))
    exact = sum(guesses[w]["decade"] == decade for w, (_, decade) in zip(words, labels))
    n = len(words)
    return [f"  sex, test records whose name went to one sex only in that decade: {single_right:,} of "
            f"{len(single):,} ({single_right / len(single):.1%}); with the record's decade given: {single_given:,} "
            f"({single_given / len(single):.1%})",
            f"  sex, all {n:,} test records: {all_right:,} ({all_right / n:.1%})",
            f"  decade within +-1 decade: {near:,} ({near / n:.1%}); exact: {exact:,} ({exact / n:.1%})"]


def mixed_conditions(n: int, seed: int, guidance: float | None = None) -> list[SamplingParams]:
    """n names as 100 requests, each with a random sex and decade (either may be left out); guidance None:
    the model's default."""
    rng = random.Random(seed)
    sexes, decades = [None, "F", "M"], [None] + [str(d) for d in range(1880, 2020, 10)]
    pairs = [tuple((k, v) for k, v in (("sex", rng.choice(sexes)), ("decade", rng.choice(decades))) if v)
             for _ in range(100)]
    return [SamplingParams(n=n // 100, seed=seed * 1000 + i, conditions=c, guidance=guidance)
            for i, c in enumerate(pairs)]


def run_all(engine: Engine, requests: list[SamplingParams]) -> None:
    """Submit every request at once (they share steps), wait for all."""
    import threading

    left, done = [len(requests)], threading.Event()

    def finish(_result):
        left[0] -= 1  # the engine thread is the only writer
        if not left[0]:
            done.set()

    for params in requests:
        engine.submit(params, finish)
    done.wait()


def engine_figures(registry, runs: int, names: int, table_mb: float) -> list[str]:
    engines = {}
    for label, name, mb in (("unconditional, logits table", "records", Settings().logits_table_mb),
                            ("unconditional, computed", "records", 0.0),
                            ("conditional, computed", "conditional", 0.0),
                            ("conditional, logits table", "conditional", table_mb)):
        loaded = load_version(Settings(registry=registry, threads=2, logits_table_mb=mb), name,
                              read_latest(registry, name))
        if label.endswith("logits table") and (not mb or loaded.runner.table is None):  # --table-mb 0: skipped
            loaded.close()
            continue
        engines[label] = Engine(loaded, 4096, max_queue=1000, max_name_length=MAX_NAME_LENGTH, attempts_per_name=20)
        engines[label].generate(SamplingParams(n=2000, seed=0))  # warm-up
    gc.freeze()
    rates = defaultdict(list)
    for i in range(runs):  # rounds interleave every setting: drift in this shared machine hits them alike
        for label, engine in engines.items():
            for kind, requests in (("any", [SamplingParams(n=names, seed=i + 1)]),
                                   ("mixed, unguided", mixed_conditions(names, i + 1, guidance=0.0)),
                                   ("mixed, guided", mixed_conditions(names, i + 1))):
                if kind != "any" and label.startswith("unconditional"):
                    continue
                start = time.perf_counter()
                run_all(engine, requests)
                rates[f"{label}, {kind} conditions" if label.startswith("conditional") else label].append(
                    names / (time.perf_counter() - start))
    for engine in engines.values():
        engine.stop()
        engine.model.close()
    return [f"  {label:<45} {statistics.median(v):>11,.0f} names/s ({min(v):,.0f}-{max(v):,.0f})"
            for label, v in rates.items()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=("mlp", "wavenet"), default="mlp", help="the model type of both models")
    p.add_argument("--steps", type=int, default=30000, help="training steps of each model (the mlp's default)")
    p.add_argument("--years", default="1880-2017", help="SSA years FIRST-LAST")
    p.add_argument("--runs", type=int, default=3, help="engine rounds; figures are medians over them")
    p.add_argument("--names", type=int, default=200_000, help="names per engine run")
    p.add_argument("--table-mb", type=float, default=800.0, help="NAMEGEN_LOGITS_TABLE_MB for the conditional "
                                                                  "model's table run (0: skip it)")
    p.add_argument("--n-embd", type=int, help="both models' embedding width (default: the CLI's)")
    p.add_argument("--n-hidden", type=int, help="both models' hidden width (default: the CLI's)")
    p.add_argument("--condition-dropout", type=float, default=0.2, help="the conditional model's, per condition")
    p.add_argument("--condition-dropout-all", type=float, default=0.0, help="the conditional model's, all at once")
    p.add_argument("--guidance", default="0,2", help="guidance scales to generate the sex and decade figures with")
    p.add_argument("--temperatures", default="1,0.5", help="temperatures to generate the decade figures at")
    p.add_argument("--finetune", type=int, default=0, help="then fine-tune both this many steps, the conditional "
                                                          "one with explain's loss (0: no fine-tuning)")
    p.add_argument("--explain-weight", type=float, default=1.0, help="of explain's loss in --finetune (0: none)")
    args = p.parse_args()
    try:
        scales = [float(g) for g in args.guidance.split(",")]
        temperatures = [float(t) for t in args.temperatures.split(",")]
    except ValueError:
        p.error(f"--guidance {args.guidance!r} and --temperatures {args.temperatures!r}: numbers separated by commas")
    paths = train_pair(args.model, args.steps, args.years, {"n_embd": args.n_embd, "n_hidden": args.n_hidden},
                       (args.condition_dropout, args.condition_dropout_all))
    base = {name: json.loads((path / "checkpoint.json").read_text())["metrics"]["val_nll"]
            for name, path in paths.items()}
    if args.finetune:
        paths = finetune_pair(paths, args.finetune, args.explain_weight)
    first, last = map(int, args.years.split("-"))
    figures = nll_figures(paths)
    registry = served_registry(paths)
    by_sex, top, sexes, records = ssa_counts(first, last)
    settings = Settings(registry=registry, threads=2)
    model = load_version(settings, "conditional", read_latest(registry, "conditional"))
    engine = Engine(model, 4096, max_queue=100, max_name_length=MAX_NAME_LENGTH, attempts_per_name=20)
    lines = []
    for scale in scales:
        lines += [f"  guidance {scale:g}{' (the export default)' if scale == model.manifest.guidance else ''}:"]
        lines += sex_figures(engine, by_sex, sexes, scale)
        lines += [line for t in temperatures for line in decade_figures(engine, top, scale, t)]
    lines += decade_ceiling(records, top)
    engine.stop()
    lines += explain_figures(model, figures["data"], sexes)
    model.close()
    sizes = ", ".join(f"{key} {value}" for key, value in (("n_embd", args.n_embd), ("n_hidden", args.n_hidden))
                      if value)
    print(machine_line("conditional"))
    print(f"SSA {args.years}: {figures['records']:,} records (name, sex, decade), split {figures['split']}; "
          f"two {args.model}s ({sizes or 'CLI defaults'}, {args.steps} steps; condition dropout "
          f"{args.condition_dropout:g} each, {args.condition_dropout_all:g} all at once), same records and split")
    if args.finetune:
        print(f"  then each fine-tuned {args.finetune} steps (python -m training finetune), the conditional one with "
              f"explain's loss on sex, weight {args.explain_weight:g} (0: none); val NLL before: conditional "
              f"{base['conditional']:.4f}, unconditional {base['records']:.4f}")
    print(f"  val NLL: conditional {figures['conditional']:.4f}, unconditional {figures['unconditional']:.4f}; "
          f"with sex and decade left out, as served (the exact marginal, sum_c p(c) p(name | c)) "
          f"{figures['mixture']:.4f} ({figures['mixture'] - figures['unconditional']:+.4f}), with the learned "
          f"'any' index {figures['any']:.4f} ({figures['any'] - figures['unconditional']:+.4f})")
    print("  val NLL per value: " + ", ".join(f"{k} {v:.3f}" for k, v in figures["by_condition"].items() if k != "any"))
    print("\n".join(lines))
    print(f"engine (in process, max_batch_rows 4096, 2 threads), medians of {args.runs} interleaved rounds, "
          f"{args.names:,} names per run:")
    print("\n".join(engine_figures(registry, args.runs, args.names, args.table_mb)))


if __name__ == "__main__":
    main()
