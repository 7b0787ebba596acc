"""`python -m export CHECKPOINT --registry DIR`, `... list`, `... rollback`. Bad input: one line, exit 2.

    python -m export CHECKPOINT --registry DIR [--name NAME] [--calibrate] [--keep K]
    python -m export list --registry DIR
    python -m export rollback --registry DIR --name NAME [--to VERSION]

A checkpoint folder literally called `list` or `rollback` is spelled ./list.
Only the export itself imports torch; list and rollback read the registry folder and nothing else.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from namegen.argparsing import OneLineParser, UsageError, number

from . import registry
from .errors import ExportError

SUBCOMMANDS = ("list", "rollback")


def export_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m export", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="checkpoint folder written by `python -m training train`")
    p.add_argument("--registry", required=True, type=Path, help="model registry folder (created if absent)")
    p.add_argument("--name", help="model name in the registry (default: the checkpoint's model type)")
    p.add_argument("--calibrate", action="store_true",
                   help="recompute BatchNorm statistics over the whole training split first")
    p.add_argument("--keep", type=number(int, above=0), help="then delete all but the K newest versions (never LATEST)")
    p.add_argument("--guidance", type=number(float, at_least=0, at_most=20),
                   help="a conditional model's default guidance scale, 0 (off) to 20 (default 3)")
    return p


def admin_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m export")
    sub = p.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    ls = sub.add_parser("list", help="names, versions, metrics, and which version is LATEST")
    ls.add_argument("--registry", required=True, type=Path)
    rb = sub.add_parser("rollback", help="point LATEST at an earlier version")
    rb.add_argument("--registry", required=True, type=Path)
    rb.add_argument("--name", required=True)
    rb.add_argument("--to", help="this version (default: the one before the current LATEST)")
    return p


def cmd_export(args) -> None:
    from training.checkpoint import CheckpointError  # torch: only for the export itself
    from training.data import DataError

    from .pipeline import export_checkpoint

    try:
        published = export_checkpoint(args.checkpoint, args.registry, name=args.name, calibrate=args.calibrate,
                                      keep=args.keep, guidance=args.guidance)
    except (CheckpointError, DataError) as e:
        raise ExportError(str(e)) from None
    m = published.manifest
    for note in published.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"published {m['name']}/{m['version']} -> {published.path} (LATEST); val NLL torch "
          f"{m['parity']['torch_val_nll']:.6f} onnx {m['parity']['onnx_val_nll']:.6f}, max |dlogit| onnx "
          f"{m['parity']['onnx_max_abs_logit_diff']:.2g} pt2 {m['parity']['pt2_max_abs_logit_diff']:.2g}"
          f"{', calibrated' if m['calibrated'] else ''}")


def _metric(manifest: dict | None, key: str) -> str:
    value = (manifest or {}).get("metrics", {}).get(key)
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"


def cmd_list(args) -> None:
    root = registry.registry_root(args.registry)
    models = registry.list_models(root)
    if not models:
        print(f"{root}: no models")
        return
    rows = [("NAME", "VERSION", "TYPE", "TRAIN_NLL", "VAL_NLL", "TEST_NLL", "CALIBRATED", "LATEST")]
    for name, entries in models.items():
        if not entries:
            rows.append((name, "-", "-", "-", "-", "-", "-", "-"))
        for e in entries:
            m = e.manifest
            rows.append((name, e.version, (m or {}).get("model_type", "?"), _metric(m, "train_nll"),
                         _metric(m, "val_nll"), _metric(m, "test_nll"),
                         "yes" if (m or {}).get("calibrated") else "no", "*" if e.latest else ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    for name, entries in models.items():
        if not any(e.latest for e in entries):
            print(f"note: {name}: LATEST is missing or names no published version; "
                  f"fix with: python -m export rollback --registry {root} --name {name} --to VERSION", file=sys.stderr)


def cmd_rollback(args) -> None:
    root = registry.registry_root(args.registry)
    old, new = registry.rollback(root, args.name, args.to)
    print(f"{args.name}: LATEST {old or '(none)'} -> {new}")


COMMANDS = {"list": cmd_list, "rollback": cmd_rollback}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv and argv[0] in SUBCOMMANDS:
            args = admin_parser().parse_args(argv)
            COMMANDS[args.command](args)
        else:
            cmd_export(export_parser().parse_args(argv))
    except (ExportError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:  # a registry it may not write, a full disk: the file and the reason, no traceback
        print(f"error: {e.filename or 'registry'}: {e.strerror or e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
