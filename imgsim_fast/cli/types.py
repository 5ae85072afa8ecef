"""Argument types and the parser class of the `imgsim` command line: bad values are refused by argparse,
before any work, with one line on stderr and exit status 2 (README, "Bad input")."""
from __future__ import annotations

import argparse
import difflib
import math
import re

__all__ = ["Parser", "positive_int", "non_negative_int", "bits", "cosine", "iso_date", "extension_list",
           "rating_filter"]


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (`imgsim index: error: ...`), not the usage block first:
    scripts and logs get the reason on the line they look at. Subparsers inherit the class."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")

    def parse_args(self, args=None, namespace=None):
        """argparse's, but words no option takes are refused by the (sub)command they were given to (its name
        and help in the message, not the top level's), with the nearest option named: `--metod` is a typo of
        `--method`, and the person needs to hear which."""
        ns, extras = self.parse_known_args(args, namespace)
        if not extras:
            return ns
        parser = self
        while True:  # down the chosen subcommands: `imgsim cluster dedup` is refused by `cluster dedup`
            chosen = [a.choices[getattr(ns, a.dest)] for a in parser._actions
                      if isinstance(a, argparse._SubParsersAction) and getattr(ns, a.dest, None) in a.choices]
            if not chosen:
                break
            parser = chosen[0]
        options = {o for a in parser._actions for o in a.option_strings}
        hints = []
        for e in extras:
            name = e.split("=", 1)[0]
            if not e.startswith("-"):
                continue
            if name in options:  # given before the subcommand, where the top level has no such option
                hints.append(f"{name} goes after `{parser.prog}`")
            else:
                hints += [f"did you mean {m}?" for m in difflib.get_close_matches(name, sorted(options), n=1)]
        hint = "; " + "; ".join(dict.fromkeys(hints)) if hints else ""
        parser.error(f"unrecognized arguments: {' '.join(extras)}{hint}")


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def positive_int(text: str) -> int:
    v = _int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def non_negative_int(text: str) -> int:
    v = _int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {v}")
    return v


def bits(code_bits: int):
    """A Hamming distance in bits, 0..code_bits (a distance beyond the code length matches everything)."""
    def parse(text: str) -> int:
        v = _int(text)
        if not 0 <= v <= code_bits:
            raise argparse.ArgumentTypeError(f"must be a bit count from 0 to {code_bits}, got {v}")
        return v

    parse.__name__ = f"bits(0..{code_bits})"
    return parse


def cosine(text: str) -> float:
    """A cosine similarity: finite, in [-1, 1] (NaN would compare false with everything)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(v) or not -1.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a cosine from -1 to 1, got {text}")
    return v


# The ISO 8601 prefixes accepted, by length, as strptime formats: each is parsed, so 2020-13-45 or
# 2021-02-29 is refused, not compared as text.
_ISO_FORMATS = {4: "%Y", 7: "%Y-%m", 10: "%Y-%m-%d", 13: "%Y-%m-%dT%H", 16: "%Y-%m-%dT%H:%M",
                19: "%Y-%m-%dT%H:%M:%S"}
_ISO = re.compile(r"\d{4}(-\d{2}(-\d{2}(T\d{2}(:\d{2}(:\d{2})?)?)?)?)?")


def iso_date(text: str) -> str:
    """An ISO 8601 date or a prefix of one (2020, 2020-06, 2020-06-01T12:30) naming a real day and time:
    the catalog compares the text of dates, so anything else would silently match nothing or everything."""
    import datetime

    try:
        if not _ISO.fullmatch(text):
            raise ValueError
        datetime.datetime.strptime(text, _ISO_FORMATS[len(text)])
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO date such as 2020-06-01 (or 2020, 2020-06), "
                                         "or names no real day") from None
    return text


_EXT = re.compile(r"\.?[A-Za-z0-9][A-Za-z0-9_+-]{0,15}")


def extension_list(text: str) -> frozenset[str]:
    """--extensions: comma-separated file name extensions, dot optional (`jpg,png,.HEIC`), as the walker
    compares them (lower case, leading dot)."""
    from imgsim_fast.io.loading import normalise_extensions

    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if not _EXT.fullmatch(t)]
    if not items or bad:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of extensions such as jpg,png,heic")
    return normalise_extensions(items)


_RATING = re.compile(r"(>=|<=|!=|=|>|<)?\s*(-?\d+)")


def rating_filter(text: str) -> tuple[str, int]:
    """--rating: stars with an optional comparison, `4`, `>=4`, `<3`, `-1` (rejected): (operator, stars)."""
    m = _RATING.fullmatch(text.strip())
    if not m or not -1 <= int(m.group(2)) <= 5:
        raise argparse.ArgumentTypeError(f"{text!r} is not a rating such as 4, '>=4' or '<3' (stars -1 to 5)")
    return m.group(1) or "=", int(m.group(2))
