"""Near-duplicate grouping: exact against brute force on codes, and end to end on real photos."""
import hashlib
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from imgsim_fast.cli import main
from imgsim_fast.codes import hamming_reference
from imgsim_fast.dedup import group_duplicates, near_duplicate_pairs


def _components(dist: np.ndarray, threshold: int) -> list[list[int]]:
    n = len(dist)
    seen, groups = set(), []
    for s in range(n):
        if s in seen:
            continue
        stack, comp = [s], []
        seen.add(s)
        while stack:
            i = stack.pop()
            comp.append(i)
            for j in np.nonzero(dist[i] <= threshold)[0]:
                if int(j) not in seen:
                    seen.add(int(j))
                    stack.append(int(j))
        if len(comp) > 1:
            groups.append(sorted(comp))
    return sorted(groups)


@pytest.mark.parametrize("words", [1, 4])
def test_groups_equal_brute_force_components(words):
    rng = np.random.default_rng(7 + words)
    centres = rng.integers(0, 2**64, size=(30, words), dtype=np.uint64)
    codes = [centres]
    for c in centres[:12]:  # planted near-duplicates at 1..12 flipped bits
        for _ in range(3):
            x = c.copy()
            for b in rng.choice(64 * words, size=rng.integers(1, 13), replace=False):
                x[b // 64] ^= np.uint64(1 << int(b % 64))
            codes.append(x[None])
    codes = np.concatenate(codes)
    perm = rng.permutation(len(codes))
    codes = codes[perm]
    dist = hamming_reference(codes, codes)
    for threshold in (0, 4, 10):
        res = group_duplicates([str(i) for i in range(len(codes))], codes, threshold)
        assert sorted(sorted(g.members) for g in res.groups) == _components(dist, threshold)
        for g in res.groups:
            assert g.distances == [int(dist[g.members[0], m]) for m in g.members]
        i, j, d = near_duplicate_pairs(codes, threshold)
        assert np.all(i < j)
        ref = np.argwhere(np.triu(dist <= threshold, k=1))
        assert sorted(zip(i.tolist(), j.tolist())) == sorted(map(tuple, ref.tolist()))
        assert np.array_equal(d, dist[i, j])


def test_empty_and_errors():
    assert group_duplicates([], np.zeros((0, 1), np.uint64)).groups == []
    with pytest.raises(ValueError):
        group_duplicates(["a"], np.zeros((2, 1), np.uint64))
    with pytest.raises(ValueError):
        group_duplicates(["a"], np.zeros((1, 1), np.uint64), threshold=-1)


def _snapshot(root):
    out = {}
    for dp, _, fs in os.walk(root):
        for f in fs:
            p = os.path.join(dp, f)
            st = os.stat(p)
            with open(p, "rb") as f:
                out[p] = (st.st_size, st.st_mtime_ns, hashlib.sha256(f.read()).hexdigest())
    return out


def test_cli_dedup_on_real_photos(tmp_path, photos, capsys):
    # Four distinct photos; copies of two of them as users make them; one byte-identical copy; one bad file.
    src = [p for p in photos if p.endswith(".jpg")][:4]
    assert len(src) == 4
    d = tmp_path / "album"
    (d / "sub").mkdir(parents=True)
    names = []
    for i, p in enumerate(src):
        with Image.open(p) as im:
            im = im.convert("RGB")
            im.thumbnail((800, 800))
            im.save(d / f"photo{i}.jpg", quality=90)
            names.append(f"photo{i}.jpg")
            if i == 0:
                im.resize((im.width // 2, im.height // 2)).save(d / "sub" / "photo0_small.jpg", quality=60)
                ImageEnhance.Brightness(im).enhance(1.1).save(d / "sub" / "photo0_bright.png")
            if i == 1:
                im.save(d / "sub" / "photo1_q30.jpg", quality=30)
    shutil.copy(d / "photo2.jpg", d / "sub" / "photo2_copy.jpg")
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    before = _snapshot(d)

    rc = main(["dedup", str(d), "--workers", "1", "--no-progress", "--json", str(tmp_path / "out.json")])
    assert rc == 0
    assert _snapshot(d) == before  # report only: nothing moved, changed or deleted
    doc = json.loads((tmp_path / "out.json").read_text())
    groups = sorted(sorted(os.path.relpath(f, d) for f in g["files"]) for g in doc["groups"])
    assert groups == [
        ["photo0.jpg", "sub/photo0_bright.png", "sub/photo0_small.jpg"],
        ["photo1.jpg", "sub/photo1_q30.jpg"],
        ["photo2.jpg", "sub/photo2_copy.jpg"],
    ]
    exact = [g for g in doc["groups"] if g["exact"]]
    assert len(exact) == 1 and all(f.endswith(("photo2.jpg", "photo2_copy.jpg")) for f in exact[0]["files"])
    assert [e["path"] for e in doc["errors"]] == [str(d / "broken.jpg")]
    err = capsys.readouterr().err
    assert "broken.jpg" in err
