"""File names on the terminal (issue 11): a name holding an escape sequence, a newline or a C1 control reaches
stdout and stderr of index, search and query only through names.display_path, so it can neither send an
escape sequence to the terminal nor forge a result line."""
import os
import re
import shutil

import pytest
from PIL import Image

from imgsim_fast.cli.main import main
from imgsim_fast.io.names import display_path

# ESC [31m (red), a newline, a carriage return and a C1 CSI (U+009B, UTF-8 C2 9B). Valid UTF-8: the catalog
# skips names that are not (a walk error), so the bad query below carries the non-UTF-8 byte.
HOSTILE = b"evil\x1b[31mred\nline\r\xc2\x9b2J.jpg"
BAD_QUERY = b"bad\x1b[1m\nquery\xff.jpg"
# Any control character but the newline that ends each line: C0, DEL, C1.
_RAW_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")
# rank, the distance in words ("0/64 bits, duplicate-close"), the name last.
_HIT = re.compile(r"^ +\d+  \d+/64 bits, [a-z-]+ *  \S.*$")


def _clean(text: str) -> str:
    assert not _RAW_CONTROL.search(text), f"raw control character printed: {text!r}"
    return text


@pytest.fixture()
def hostile_folder(tmp_path, photos, capsys):
    d = tmp_path / "d"
    d.mkdir()
    names = [HOSTILE, b"p1.jpg", b"p2.jpg", b"p3.jpg"]
    for name, src in zip(names, photos):
        im = Image.open(src).convert("RGB")
        im.thumbnail((160, 160))
        im.save(os.path.join(os.fsencode(d), name), "JPEG", quality=85)
    cat = str(tmp_path / "c.sqlite")
    assert main(["index", str(d), "--catalog", cat, "--workers", "1", "--no-progress"]) == 0
    out, err = capsys.readouterr()
    _clean(out + err)
    return str(d), cat, os.fsdecode(os.path.join(os.fsencode(d), HOSTILE))


def test_search_batch_prints_one_line_per_result(hostile_folder, capsys):
    d, cat, hostile = hostile_folder
    assert main(["search", d, "--catalog", cat, "--workers", "1"]) == 0
    out, err = capsys.readouterr()
    lines = _clean(out + err).splitlines()
    # 4 queries, each a "# query" header and its 4 hits: a name's newline would add lines, and break a hit
    # line in two so that it no longer matches.
    assert len(lines) == 4 * (1 + 4), lines
    assert sum(line.startswith("# ") for line in lines) == 4
    assert all(_HIT.match(line) for line in lines if not line.startswith("# ")), lines
    shown = display_path(hostile)
    assert sum(line.endswith("  " + shown) for line in lines) == 4  # once among each query's hits
    assert f"# {display_path(os.path.relpath(hostile))}" in lines or f"# {shown}" in lines


def test_single_search_and_query_print_escaped_names(hostile_folder, capsys):
    d, cat, hostile = hostile_folder
    assert main(["search", hostile, "--catalog", cat, "--workers", "1"]) == 0
    out, err = capsys.readouterr()
    lines = _clean(out + err).splitlines()
    assert len(lines) == 4 and all(_HIT.match(line) for line in lines), lines
    assert lines[0].endswith("  " + display_path(hostile))  # the query itself comes first, distance 0

    # query is search's alias: the same lines.
    assert main(["query", "--catalog", cat, "--like", hostile]) == 0
    out, err = capsys.readouterr()
    lines = _clean(out + err).splitlines()
    assert len(lines) == 4 and all(_HIT.match(line) for line in lines), lines
    assert lines[0] == f"   1  {'0/64 bits, duplicate-close':<26}  {display_path(hostile)}"


def test_errors_naming_hostile_files_stay_one_line(hostile_folder, tmp_path, capsys):
    d, cat, hostile = hostile_folder
    # A batch holding an unreadable query with a hostile name: its header line says ERROR, on one line.
    q = tmp_path / "q"
    q.mkdir()
    shutil.copy(hostile, os.path.join(os.fsencode(q), b"good.jpg"))
    with open(os.path.join(os.fsencode(q), BAD_QUERY), "wb") as f:
        f.write(b"not an image\n")
    assert main(["search", str(q), "--catalog", cat, "--workers", "1"]) == 0  # one of two queries was read
    out, err = capsys.readouterr()
    lines = _clean(out + err).splitlines()
    errors = [line for line in lines if "ERROR" in line]
    assert len(errors) == 1 and errors[0].startswith("# "), lines
    assert len(lines) == 1 + 4 + 1 + 1, lines  # good header + 4 hits, bad header, the count on stderr

    # A missing query file with a hostile name: the one-line error of main().
    missing = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"no\x1b[2Jsuch\nfile.jpg"))
    assert main(["search", missing, "--catalog", cat]) == 2
    out, err = capsys.readouterr()
    assert _clean(err).count("\n") == 1 and err.startswith("imgsim: error: "), err
