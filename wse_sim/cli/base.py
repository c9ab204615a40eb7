"""The leaves of the `wse-sim` command: its argparse, the one-line error and argument types
(every other CLI module builds on these)."""

from __future__ import annotations

import argparse
import sys

EXIT_BAD_INPUT = 2


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one `error:` line and exit code 2."""

    def error(self, message: str):
        raise SystemExit(fail(f"{self.prog}: {message}"))


def fail(message: str) -> int:
    """Print one `error:` line on stderr; return the exit code for bad input."""
    print(f"error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def int_at_least(minimum: int, allowed: str):
    """An argparse type: an integer >= `minimum`; `allowed` says so in the error."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"got {text!r}, must be {allowed}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"got {v}, must be {allowed}")
        return v
    return parse


positive_int = int_at_least(1, "a positive integer")


def one_of(allowed: tuple):
    """An argparse type: one of `allowed`; the error names the value and what is allowed."""
    def parse(text: str) -> str:
        if text not in allowed:
            raise argparse.ArgumentTypeError(f"got {text!r}, must be one of {', '.join(allowed)}")
        return text
    return parse


def fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"got {text!r}, must be a number in [0, 1)") from None
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"got {v}, must be a number in [0, 1)")
    return v
