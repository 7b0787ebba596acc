"""The command-line convention of every namegen CLI: a bad argument is one line on stderr and exit code 2,
never argparse's usage block or a traceback. Each CLI catches UsageError where it prints its errors."""
from __future__ import annotations

import argparse
import math


class UsageError(Exception):
    pass


class OneLineParser(argparse.ArgumentParser):
    """argparse prints usage plus a message; we promise one line."""

    def error(self, message):
        raise UsageError(message)


def number(kind: type, *, above: float | None = None, at_least: float | None = None,
           below: float | None = None, at_most: float | None = None):
    """An argparse type: a finite `kind` (int or float) within the given bounds, else a one-line error."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {kind.__name__}") from None
        infinite_or_nan = isinstance(value, float) and not math.isfinite(value)
        for bound, fails, words in ((above, lambda b: value <= b, ">"), (at_least, lambda b: value < b, ">="),
                                    (below, lambda b: value >= b, "<"), (at_most, lambda b: value > b, "<=")):
            if bound is not None and (infinite_or_nan or fails(bound)):
                raise argparse.ArgumentTypeError(f"must be {words} {bound:g}, got {text}")
        if infinite_or_nan:
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        return value
    return parse
