"""File names as text: the one rule for writing a path into a report file or onto a terminal.

On Linux a file name is bytes, not text. imgsim_fast carries every path as a `str` from `os.fsdecode`
(undecodable bytes become lone surrogates, PEP 383), so the file system always gets back the exact bytes.
Text that leaves the program cannot carry lone surrogates, so:

- `path_text(p)` is the rule for JSON, CSV and HTML outputs: valid UTF-8 names unchanged; each byte that is
  not UTF-8 written as the four characters `\\xNN` (Python's 'backslashreplace'). Outputs stay valid UTF-8
  for every reader; a name with such bytes is readable and recognisable, not reversible (undo manifests
  and the catalog keep exact paths their own way).
- `display_path(p)` is the rule for a terminal or an image caption: `path_text`, and every control
  character (newline, tab, ESC and the other C0/C1 codes, DEL) escaped as `\\n`, `\\t` or `\\xNN`, so a
  hostile name can neither forge output lines nor send escape sequences to the terminal.
"""
from __future__ import annotations

import os
import re

__all__ = ["display_path", "path_text"]

# C0 controls, DEL and C1 controls (U+0080..U+009F, which some terminals also obey).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def path_text(path) -> str:
    """`path` (str, bytes or os.PathLike) as valid Unicode: bytes that are not UTF-8 become `\\xNN`."""
    try:
        raw = os.fsencode(path)
    except UnicodeEncodeError:  # a surrogate os.fsdecode never makes (built by hand): escape it as \udNNN
        return os.fspath(path).encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def display_path(path) -> str:
    """`path_text(path)` with control characters escaped: safe to print or draw on one line."""
    return _CONTROL.sub(lambda m: _NAMED.get(m.group(), f"\\x{ord(m.group()):02x}"), path_text(path))
