"""Issue 15: an embedding model is identified by what it is, not by how its path was spelled."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from imgsim_fast.catalog.store import (Catalog, embedding_array_name, embedding_array_names,
                                       legacy_embedding_array_name)
from imgsim_fast.features.embedding import identity


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """Each test gets an empty digest cache (the real one is the user's ~/.cache)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setattr(identity, "_memo", {})


def _photos(root, n=3):
    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(15)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(os.path.join(root, f"p{i}.png"))


def test_every_spelling_of_a_folder_is_one_model(tiny_clip, tmp_path, monkeypatch):
    link = tmp_path / "clip-link"
    os.symlink(tiny_clip, link)
    monkeypatch.chdir(os.path.dirname(tiny_clip))
    relative = os.path.join(".", os.path.basename(tiny_clip))
    names = {embedding_array_name(s) for s in (tiny_clip, relative, str(link), tiny_clip + os.sep)}
    assert len(names) == 1
    (name,) = names
    assert name.startswith("embed-" + os.path.basename(tiny_clip) + "-")


def test_other_weights_are_another_model(tiny_clip, tmp_path):
    copy = tmp_path / os.path.basename(tiny_clip)
    shutil.copytree(tiny_clip, copy)
    assert embedding_array_name(str(copy)) == embedding_array_name(tiny_clip)  # same files, same name
    weights = [n for n in os.listdir(copy) if n.endswith(".safetensors")]
    assert weights
    with open(copy / weights[0], "r+b") as f:  # one changed byte in the weights
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 1]))
    assert embedding_array_name(str(copy)) != embedding_array_name(tiny_clip)


def test_digest_is_cached_by_path_size_and_mtime(tiny_clip, monkeypatch):
    embedding_array_name(tiny_clip)
    with open(identity.digest_cache_path(), encoding="utf-8") as f:
        cached = json.load(f)
    assert any(p.endswith(".safetensors") for p in cached)
    # A second run (empty memo) reads the cache: hashing a file again would raise here.
    monkeypatch.setattr(identity, "_memo", {})
    monkeypatch.setattr(identity, "_hash_file", _no_rehash)
    embedding_array_name(tiny_clip)


def _no_rehash(path):
    raise AssertionError(f"{path} was hashed again although its digest is cached")


def test_relative_and_absolute_path_hit_the_same_array(tiny_clip, tmp_path, monkeypatch):
    from imgsim_fast.catalog.indexer import index
    from imgsim_fast.jobs.search import search

    photos = tmp_path / "photos"
    _photos(photos)
    catp = str(tmp_path / "cat.sqlite")
    index([str(photos)], catp, kinds=("phash",), embed_model=tiny_clip, workers=1, pixel_digests=False)
    monkeypatch.chdir(os.path.dirname(tiny_clip))
    relative = os.path.basename(tiny_clip)
    stats = index([str(photos)], catp, kinds=("phash",), embed_model=relative, workers=1, pixel_digests=False)
    assert stats.embedded == 0  # nothing new to embed: the relative spelling is the same model
    with Catalog(catp) as c:
        assert [n for n in c.arrays() if n.startswith("embed-")] == [embedding_array_name(tiny_clip)]
    res = search(catp, str(photos / "p0.png"), method="clip", model=relative, k=3)
    assert res.hits[0].path == str(photos / "p0.png")


def test_older_catalog_arrays_are_read_then_renamed_by_the_next_writer(tiny_clip, tmp_path):
    from imgsim_fast.catalog.indexer import index

    photos = tmp_path / "photos"
    _photos(photos)
    catp = str(tmp_path / "cat.sqlite")
    index([str(photos)], catp, kinds=("phash",), embed_model=tiny_clip, workers=1, pixel_digests=False)
    new, old = embedding_array_name(tiny_clip), legacy_embedding_array_name(tiny_clip)
    with Catalog(catp) as c:
        fids, _, vecs = c.vectors(new)
    # Make it look like a catalog written before issue 15: the array named by the literal string.
    import sqlite3

    conn = sqlite3.connect(catp)
    conn.execute("PRAGMA foreign_keys = OFF")
    for table, col in (("arrays", "name"), ("vectors", "array"), ("array_blocks", "array")):
        conn.execute(f"UPDATE {table} SET {col} = ? WHERE {col} = ?", (old, new))
    conn.commit()
    conn.close()
    os.rename(os.path.join(catp + ".arrays", new + ".bin"), os.path.join(catp + ".arrays", old + ".bin"))

    with Catalog(catp) as c:  # a reader finds it under the old name
        present = [n for n in embedding_array_names(tiny_clip) if n in c.arrays()]
        assert present == [old]
    with Catalog(catp, write=True):  # a writer renames it
        pass
    with Catalog(catp) as c:
        assert [n for n in c.arrays() if n.startswith("embed-")] == [new]
        assert not c.verify()
        fids2, _, vecs2 = c.vectors(new)
        names = c.arrays()
    assert np.array_equal(fids, fids2) and np.array_equal(vecs, vecs2)
    assert sorted(os.listdir(catp + ".arrays")) == sorted(n + ".bin" for n in names)  # no stale link left


def test_missing_model_is_one_line(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="not a model folder"):
        embedding_array_name(str(tmp_path / "weights.bin"))
    with pytest.raises(ValueError, match="unknown model"):
        embedding_array_name(str(tmp_path / "no-such-folder"))
