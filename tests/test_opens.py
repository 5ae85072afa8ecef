"""One read per file (issue 12): dedup's extraction and the search of an unindexed query open each image
once. Counted with a Python audit hook ("open" is raised by io.open and os.open), in this process
(workers=1), so every open of every phase is seen."""
from __future__ import annotations

import collections
import os
import shutil
import sys

import pytest
from PIL import Image

_opens: collections.Counter | None = None


def _hook(event, args):
    if event == "open" and _opens is not None and isinstance(args[0], (str, bytes, os.PathLike)):
        _opens[os.path.abspath(os.fsdecode(args[0]))] += 1


sys.addaudithook(_hook)  # cannot be removed; it counts only while _opens is set


@pytest.fixture
def opens():
    global _opens
    _opens = collections.Counter()
    try:
        yield _opens
    finally:
        _opens = None


@pytest.fixture
def folder(tmp_path, photos):
    lib = tmp_path / "lib"
    lib.mkdir()
    for i, p in enumerate(photos[:4]):
        shutil.copyfile(p, lib / f"p{i}{os.path.splitext(p)[1]}")
    with Image.open(photos[0]) as im:
        im.convert("RGB").resize((im.width // 2, im.height // 2)).save(lib / "copy.jpg", quality=85)
    return lib


def _images(lib) -> list[str]:
    return sorted(str(p) for p in lib.iterdir())


@pytest.mark.parametrize("embed", [False, True])
def test_extraction_opens_each_file_once(folder, opens, embed):
    """Digest, header facts, decode, hashes, thumbnails and embedding inputs: one read of the bytes."""
    from imgsim_fast.features.extract import compute_features

    feats = compute_features([str(folder)], embed=embed, workers=1, progress=False)
    assert len(feats) == 5
    assert {p: opens[p] for p in _images(folder)} == {p: 1 for p in _images(folder)}


def test_dedup_reads_again_only_what_keep_best_inspects(folder, opens):
    """The pair test's detail check decodes both files of a pair whose thumbnails pass (jobs/dedup/detail.py)
    and keep-best looks at a group's lossy members at full size (re-save, upscale: keep.derived_from): a
    group's member is read at most twice more; a file in no group is opened once."""
    from imgsim_fast.jobs.dedup import find_duplicates

    res = find_duplicates([str(folder)], method="phash", workers=1, progress=False)
    (group,) = res.groups
    members = {res.paths[m] for m in group.members}
    assert str(folder / "copy.jpg") in members and len(members) == 2
    for p in _images(folder):
        assert opens[p] == 1 or (p in members and opens[p] in (2, 3)), (p, opens[p])


def test_search_of_an_unindexed_query_opens_it_once(folder, tmp_path, opens):
    import imgsim_fast as ims

    cat_path = str(tmp_path / "c.sqlite")
    ims.index([str(folder)], catalog=cat_path, progress=False)
    q = str(tmp_path / "query.jpg")
    shutil.copyfile(_images(folder)[0], q)
    opens.clear()
    with ims.Catalog(cat_path) as cat:
        res = ims.search(cat, q, k=2, workers=1)
    assert res.hits and opens[os.path.abspath(q)] == 1
    assert not any(opens[p] for p in _images(folder))  # catalog files are read from the catalog only


@pytest.mark.parametrize("extra", [{}, {"embed_model": "efficientnet-lite0"},
                                   {"dedup": True, "dedup_model": "efficientnet-lite0"}])
def test_index_opens_each_file_once_and_a_second_run_none(folder, tmp_path, opens, extra):
    """Digest, metadata, hashes, embedding inputs and dedup's features: one read of each file; an
    unchanged folder is not opened at all."""
    import imgsim_fast as ims

    cat = str(tmp_path / "c.sqlite")
    s = ims.index([str(folder)], catalog=cat, workers=1, **extra)
    assert s.added == 5 and s.decoded == 5
    assert {p: opens[p] for p in _images(folder)} == {p: 1 for p in _images(folder)}
    opens.clear()
    s = ims.index([str(folder)], catalog=cat, workers=1, **extra)
    assert s.unchanged == 5 and not any(opens[p] for p in _images(folder))
