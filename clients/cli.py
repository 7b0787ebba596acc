"""`namegen {generate,score,models,health,bench}` (also `python -m clients`).

Exit codes: 0 success; 2 bad arguments or a 4xx from the server (the request is wrong); 1 the server or the
network failed, a 429 that outlasted the retries included (the server is overloaded; the request is fine).
Errors are one line on stderr.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

import httpx

from namegen.argparsing import OneLineParser, UsageError, number

from .errors import BadRequestError, NameGenError
from .loadgen import run_load
from .render import print_table
from .sdk import DEFAULT_TIMEOUT, DEFAULT_URL, NameGenClient, resolve_base_url


def _positive_ints(text):
    return [number(int, above=0)(part) for part in text.split(",")]


def _fraction(text):
    try:
        return number(float, at_least=0, at_most=1)(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be a fraction from 0 to 1, got {text}") from None


def _add_connection_options(parser: argparse.ArgumentParser, **defaults) -> None:
    """--url and --timeout work before or after the command. The subcommands' copies default to SUPPRESS so
    they do not reset a value given before the command (separate actions: `parents=` would share them)."""
    parser.add_argument("--url", default=defaults.get("url", argparse.SUPPRESS),
                        help=f"server base URL (default: $NAMEGEN_URL, else {DEFAULT_URL})")
    parser.add_argument("--timeout", type=number(float, above=0), default=defaults.get("timeout", argparse.SUPPRESS),
                        help=f"seconds to wait for an answer (default {DEFAULT_TIMEOUT.read:g})")


def _add_condition_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sex", help="a conditional model's sex, F or M (default: any)")
    parser.add_argument("--decade", type=int, help="a conditional model's decade, 1880 ... 2010 (default: any)")


def _add_score_parser(sub) -> None:
    s = sub.add_parser("score", help="how likely the model finds each name")
    _add_connection_options(s)
    s.add_argument("names", nargs="+")
    s.add_argument("--model")
    _add_condition_options(s)
    s.add_argument("--explain", action="store_true", default=None,
                   help="conditional models: what each name sounds like, p(sex | name) and the likeliest decade")
    s.add_argument("--details", action="store_true",
                   help="each character's probability given the ones before it; \".\" is the end of the name")
    s.add_argument("--json", action="store_true")
    s.set_defaults(run=cmd_score)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="namegen", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_connection_options(p, url=None, timeout=None)
    sub = p.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    # Values the server validates are passed through as typed, so its message (and exit code 2) is the one
    # the user sees; only what cannot be sent at all is refused here.
    g = sub.add_parser("generate", help="sample names, one per line")
    _add_connection_options(g)
    g.add_argument("-n", type=int, help="how many names (server default: 10)")
    g.add_argument("--seed", type=int, help="same seed, same names; without it the seed goes to stderr")
    g.add_argument("--prefix", help="every name starts with this")
    g.add_argument("--temperature", type=float, help="0 is greedy; higher is wilder (server default: 1.0)")
    g.add_argument("--top-k", type=int, help="sample only from the k likeliest characters")
    g.add_argument("--min-length", type=int)
    g.add_argument("--max-length", type=int)
    g.add_argument("--unique", action="store_true", default=None, help="no name twice")
    g.add_argument("--novel", action="store_true", default=None, help="no name from the training set")
    g.add_argument("--model", help="model name (default: the server's default)")
    _add_condition_options(g)
    g.add_argument("--guidance", type=number(float, at_least=0, at_most=20),
                   help="conditional models: how strongly names lean to --sex and --decade, 0 (off) to 20 "
                        "(default: the model's)")
    g.add_argument("--show-nll", action="store_true", help="add each name's NLL as a second column")
    g.add_argument("--json", action="store_true", help="print the server's response as JSON")
    g.set_defaults(run=cmd_generate)

    _add_score_parser(sub)

    m = sub.add_parser("models", help="the models the server holds")
    _add_connection_options(m)
    m.add_argument("--json", action="store_true")
    m.set_defaults(run=cmd_models)

    h = sub.add_parser("health", help="is the server ready (exit 1 if not)")
    _add_connection_options(h)
    h.add_argument("--json", action="store_true")
    h.set_defaults(run=cmd_health)

    b = sub.add_parser("bench", help="load the server and report throughput and latency")
    _add_connection_options(b)
    b.add_argument("-c", "--concurrency", type=number(int, above=0), default=8, help="requests in flight (default 8)")
    b.add_argument("--requests", type=number(int, above=0), help="stop after this many requests")
    b.add_argument("--duration", type=number(float, above=0),
                   help="stop after this many seconds (default 10 when --requests is not given either)")
    b.add_argument("-n", type=_positive_ints, default=[1], help="names per request; a list like 1,10,100 mixes")
    b.add_argument("--seeded", type=_fraction, nargs="?", const=1.0, default=0.0,
                   help="share of requests that carry a seed (alone: all of them)")
    b.add_argument("--model", action="append", help="model to ask for; repeat to mix (default: the server's)")
    b.add_argument("--warmup", type=number(int, at_least=0), default=0,
                   help="requests sent first and not measured")
    b.add_argument("--json", action="store_true", help="print the report as JSON")
    b.add_argument("--json-out", type=Path, help="also write the report as JSON to this file")
    b.set_defaults(run=cmd_bench)
    return p


def _base_url(args) -> str:
    try:
        return resolve_base_url(args.url)
    except ValueError as exc:  # not an http(s) URL with a host
        raise UsageError(str(exc)) from None


def _timeout(args) -> httpx.Timeout:
    if args.timeout is None:
        return DEFAULT_TIMEOUT
    # --timeout is for the answer; an unreachable server should still fail fast.
    return httpx.Timeout(args.timeout, connect=min(args.timeout, DEFAULT_TIMEOUT.connect))


def _client(args) -> NameGenClient:
    return NameGenClient(_base_url(args), timeout=_timeout(args))


def _print_json(data) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def cmd_generate(args) -> int:
    with _client(args) as client:
        result = client.generate(args.n, seed=args.seed, temperature=args.temperature, top_k=args.top_k,
                                 prefix=args.prefix, min_length=args.min_length, max_length=args.max_length,
                                 unique=args.unique, exclude_training=args.novel, model=args.model, sex=args.sex,
                                 decade=args.decade, guidance=args.guidance)
    if result.exhausted:  # on stderr even with --json: a script reading stdout still sees the names it got
        print(f"note: only {len(result.names)} names passed the filters within the server's attempt budget; "
              "loosen --unique, --novel or the length bounds to get more", file=sys.stderr)
    if args.json:
        _print_json(result.raw)
        return 0
    if args.seed is None:  # as `python -m training sample` does: the seed to repeat this, off stdout
        print(f"seed {result.seed}", file=sys.stderr)
    width = max((len(g.name) for g in result.names), default=0)
    for g in result.names:
        print(f"{g.name:<{width}}  {g.nll:.4f}" if args.show_nll else g.name)
    return 0


def cmd_score(args) -> int:
    with _client(args) as client:
        scores = client.score(args.names, model=args.model, sex=args.sex, decade=args.decade, explain=args.explain)
    if args.json:
        _print_json(scores.raw)
        return 0
    if args.explain:
        print_table(["name", "NLL", "most likely", "posterior"],
                    [[s.name, f"{s.nll:.4f}", " ".join(s.most_likely.values()), _posterior_text(s.posterior)]
                     for s in scores.results], title=f"{scores.model} {scores.version}", numeric=[False, True, False, False])
        return 0
    print_table(["name", "NLL", "NLL/char", "perplexity"],
                [[s.name, f"{s.nll:.4f}", f"{s.nll_per_char:.4f}", f"{s.perplexity:.3f}"] for s in scores.results],
                title=f"{scores.model} {scores.version}", numeric=[False, True, True, True])
    if args.details:
        for s in scores.results:
            print()
            print_table(["char", "p", "NLL"], [[c.char, f"{c.p:.4f}", f"{c.nll:.4f}"] for c in s.chars],
                        title=s.name, numeric=[False, True, True])
    return 0


def _posterior_text(posterior: dict[str, dict[str, float]]) -> str:
    """'F 0.98 M 0.02; 2010 0.41 2000 0.30 ...': each condition's likeliest values (three at most)."""
    parts = []
    for values in posterior.values():
        top = sorted(values.items(), key=lambda item: -item[1])[:3]
        parts.append(" ".join(f"{value} {p:.2f}" for value, p in top))
    return "; ".join(parts)


def _fetched(args, call: str):
    """The SDK's `call` (models, health); with --json its response is printed as it came."""
    with _client(args) as client:
        result = getattr(client, call)()
    if args.json:
        _print_json(result.raw)
    return result


def cmd_models(args) -> int:
    listing = _fetched(args, "models")
    if args.json:
        return 0

    def nll(m, key):
        value = m.metrics.get(key)
        return "-" if value is None else f"{value:.4f}"

    print_table(["name", "version", "type", "backend", "device", "context", "vocab", "val NLL", "test NLL"],
                [[m.name + (" (default)" if m.name == listing.default else ""), m.version, m.type, m.backend,
                  m.device, str(m.block_size), str(len(m.vocab)), nll(m, "val_nll"), nll(m, "test_nll")]
                 for m in listing.models],
                numeric=[False] * 5 + [True] * 4)
    return 0


def cmd_health(args) -> int:
    health = _fetched(args, "health")
    if not args.json:
        print(health.status)
        for name, version in health.models.items():
            print(f"  {name} {version}")
    return 0 if health.ready else 1


def cmd_bench(args) -> int:
    duration = 10.0 if args.requests is None and args.duration is None else args.duration
    report = asyncio.run(run_load(_base_url(args), concurrency=args.concurrency, requests=args.requests,
                                  duration=duration, n=args.n, seeded=args.seeded, model=args.model,
                                  warmup=args.warmup, timeout=_timeout(args)))
    if args.json:
        _print_json(report.to_dict())
    else:
        print(report.format())
    if args.json_out:
        try:
            args.json_out.parent.mkdir(parents=True, exist_ok=True)
            args.json_out.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        except OSError as exc:
            raise UsageError(f"--json-out {args.json_out}: {exc.strerror or exc}; the report is printed above")
    if report.ok == 0:
        print(f"error: none of {report.requests} requests to {report.url} succeeded "
              f"({', '.join(f'{k} x{v}' for k, v in report.errors.items())})", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.run(args)
    except (UsageError, BadRequestError) as exc:
        return _fail(exc, 2)
    except NameGenError as exc:
        return _fail(exc, 1)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)


def _fail(error, code: int) -> int:
    print("error: " + " ".join(str(error).split()), file=sys.stderr)  # one line, whatever the server sent
    return code
