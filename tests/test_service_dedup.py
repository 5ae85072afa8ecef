"""The service's duplicates are `imgsim dedup`'s: the same pair test on the same features (border-trimmed
codes, the two embedded views in the learned space, the pixel check of the thumbnails), pair for pair, as
files are added, after a restart that reads everything back from the catalog, and in /v1/duplicates."""
import dataclasses
import itertools
import os

import httpx
import numpy as np
import pytest
from PIL import Image, ImageOps

from imgsim_fast.bench.corpus import apply_edit

from imgsim_fast.jobs.dedup import _learned_space, find_duplicates
from imgsim_fast.jobs.dedup.detect import DEFAULTS, PairJudge
from imgsim_fast.features.extract import compute_features
from lookalike_pictures import rgb, save_about_boxes, save_burst, save_slides, textured_share
from service_server import Server




@pytest.fixture(scope="module")
def folder(tmp_path_factory, photos):
    """Copies of a real photo (JPEG q40, an 85% crop, a mirror, a letterbox), two slides of one template with
    other words and two frames of a burst (their hashes are within dedup's pHash radius: only the pixel check
    tells them apart), two about boxes of one application with a JPEG and a half-size copy of one (only the
    detail check tells them apart), and another photo."""
    d = tmp_path_factory.mktemp("svc-dedup")
    photo = rgb(photos[0], 480)
    w, h = photo.size
    photo.save(d / "photo.png")
    photo.save(d / "photo_q40.jpg", quality=40)
    photo.crop((w // 20, h // 12, w // 20 + w * 17 // 20, h // 12 + h * 17 // 20)).save(d / "photo_crop.jpg", quality=90)
    ImageOps.mirror(photo).save(d / "photo_mirror.png")
    bars = Image.new("RGB", (w, h * 4 // 3))
    bars.paste(photo, (0, h // 6))
    bars.save(d / "photo_letterbox.png")
    save_slides(d)
    save_about_boxes(d)
    save_burst(d, photos[2], photos[1], 480, (w, h))
    rgb(photos[3], 480).save(d / "other.jpg", quality=90)
    # The smoothest other photo with a watermark: a duplicate only as two pictures (the page probe's scores).
    smooth = rgb(min(photos[4:], key=textured_share), 480)  # photos[0] may be the smoothest: not a copy of it
    smooth.save(d / "smooth.png")
    apply_edit(smooth, "text", "strong", np.random.default_rng(3))[0].save(d / "smooth_mark.jpg", quality=90)
    return d


def _names(folder):
    return sorted(os.listdir(folder))


@pytest.fixture(scope="module")
def space(folder):
    """The folder's features in group_features' space, its thresholds, and each file's row."""
    feats = compute_features([str(folder)], embed=True, workers=1, progress=False)
    learned, t = _learned_space(feats, DEFAULTS)
    return learned, t, {os.path.basename(p): i for i, p in enumerate(feats.paths)}


@pytest.fixture(scope="module")
def truth(folder, space):
    """dedup's verdict on every pair (i < j in name order), from compute_features and group_features' space."""
    learned, t, idx = space
    judge = PairJudge(learned, "auto", t)
    names = _names(folder)
    return {(a, b): judge.match(idx[a], idx[b]) for a, b in itertools.combinations(names, 2)}


def _add_all(url, folder):
    """Add the files in name order from their server-side paths; {(earlier, later): rule} of the duplicates
    each add reports, and the ids."""
    found, ids = {}, {}
    for name in _names(folder):
        r = httpx.post(url + "/v1/images/from-path", json={"path": str(folder / name)}, timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        ids[body["image"]["id"]] = name
        for d in body["duplicates"]:
            found[(ids[d["id"]], name)] = d["rule"]
    return found, ids


def _check(url, folder, name, ids):
    with open(folder / name, "rb") as f:
        r = httpx.post(url + "/v1/check", files={"file": (name, f.read())}, timeout=60)
    assert r.status_code == 200, r.text
    return {ids[d["id"]]: d["rule"] for d in r.json()["duplicates"]}


def test_the_service_answers_what_dedup_answers(tmp_path, folder, space, truth):
    dups = {pair: m.rule for pair, m in truth.items() if m.duplicate}
    # The folder holds what the test is for: copies the embedding finds (the crop), copies the hashes find,
    # and look-alikes close enough in pHash that only the pixel check refuses them.
    assert ("photo.png", "photo_crop.jpg") in dups and ("photo.png", "photo_q40.jpg") in dups
    for kind in ("slide", "burst"):
        m = truth[(f"{kind}_a.png", f"{kind}_b.png")]
        assert not m.duplicate and m.changed is not None and m.changed > DEFAULTS.changed, (kind, m)
    assert any(truth[(f"{k}_a.png", f"{k}_b.png")].phash <= DEFAULTS.phash for k in ("slide", "burst"))
    # Two about boxes: the thumbnails pass, the detail check (the files at up to 384 px) refuses them.
    m = truth[("about_local.png", "about_report.png")]
    assert not m.duplicate and m.changed <= DEFAULTS.changed and m.detail[1] > DEFAULTS.detail_strong, m
    assert truth[("about_report.png", "about_report_q70.jpg")].duplicate
    # The watermarked smooth photo passes as two pictures' copy: without the page scores it would not, so the
    # service must carry them to find it.
    assert truth[("smooth.png", "smooth_mark.jpg")].overlay
    learned, t, idx = space
    assert not PairJudge(dataclasses.replace(learned, page_scores=None), "auto", t).passes(
        idx["smooth.png"], idx["smooth_mark.jpg"])

    catalog = tmp_path / "c.sqlite"
    srv = Server(catalog, "--embed", "efficientnet-lite0", "--allow-root", folder, "--allow-anonymous-writes").start()
    try:
        found, ids = _add_all(srv.url, folder)
        assert found == dups
        groups = httpx.get(srv.url + "/v1/duplicates?limit=200", timeout=60).json()["groups"]
    finally:
        srv.stop()
    # /v1/duplicates gives `imgsim dedup`'s groups: the same keepers (keep-best on the stored facts) and the
    # same members, each matching its keeper directly.
    served = set()
    for g in (g for g in groups if g["tier"] == "duplicate"):
        keeper, members = ids[g["members"][0]["id"]], [ids[m["id"]] for m in g["members"][1:]]
        assert all(truth[tuple(sorted((keeper, m)))].duplicate for m in members), g
        served.add((keeper, frozenset(members)))
    res = find_duplicates([str(folder)], workers=1, progress=False)
    names = [os.path.basename(p) for p in res.paths]
    assert served == {(names[g.members[0]], frozenset(names[m] for m in g.members[1:]))
                      for g in res.groups if g.tier == "duplicate"}
    # The original, not the letterboxed copy that has the most pixels (the service's keeper before); the
    # about box with its two copies, the other about box apart; the smooth photo with its watermarked copy.
    assert sorted(k for k, _ in served) == ["about_report.png", "photo.png", "smooth.png"]
    assert ("about_report.png", frozenset({"about_report_q70.jpg", "about_report_half.jpg"})) in served

    # The grouping's pixel checks and keep-best verdicts went to the catalog: grouping again from what it
    # holds looks at no pair and no picture.
    import imgsim_fast.jobs.dedup.detail as detail
    import imgsim_fast.jobs.dedup.detect as detect
    import imgsim_fast.jobs.dedup.keep as keep
    from imgsim_fast.catalog.dedup_features import stored_facts
    from imgsim_fast.catalog.store import Catalog, embedding_array_name
    from imgsim_fast.service.ingest import DIHEDRAL_ARRAY, HASH_ARRAY
    from imgsim_fast.service.live import LiveIndex

    def no_look(*a, **k):
        raise AssertionError("looked at pixels again")

    live = LiveIndex(1, 1280, dedup_model="efficientnet-lite0")
    with Catalog(str(catalog)) as cat:
        live.load(cat, HASH_ARRAY, DIHEDRAL_ARRAY, embedding_array_name("efficientnet-lite0"))
        assert live.checks and live.missing_dedup == 0
        facts = stored_facts(cat, list(ids))
    mp = pytest.MonkeyPatch()
    try:
        mp.setattr(detect, "compare", no_look)
        mp.setattr(detail, "_grey_canvas", no_look)  # the detail check's verdicts were stored too
        mp.setattr(keep, "_full_grey", no_look)  # keep-best decodes a picture only here
        again = live.groups(lambda fids: facts)
    finally:
        mp.undo()
    assert {(ids[g[0][0]], frozenset(ids[f] for f, _ in g[1:])) for t, g in again if t == "duplicate"} == served

    # A restart reads the features back from the catalog (thumbnails mapped from its array file): the same
    # answers, and nothing reported as missing.
    srv = Server(catalog, "--embed", "efficientnet-lite0", "--allow-root", folder, "--allow-anonymous-writes").start()
    try:
        assert "without dedup's features" not in srv.output()
        for name in _names(folder):
            want = {a if b == name else b: rule for (a, b), rule in dups.items() if name in (a, b)}
            want[name] = "exact"  # the stored file itself
            assert _check(srv.url, folder, name, ids) == want, name
    finally:
        srv.stop()


def test_files_indexed_without_dedup_features_join_when_added_again(tmp_path, folder):
    """A catalog from `imgsim index` has no thumbnails or views: the server says how many files lack them
    and leaves them out of the pair test (never judged on part of the evidence), though a byte-identical
    copy is still found by its digest; adding a file again stores what it lacks, and from then on it is
    judged like any other."""
    from imgsim_fast.catalog.store import Catalog
    from imgsim_fast.cli.main import main

    catalog = tmp_path / "c.sqlite"
    assert main(["index", str(folder), "--catalog", str(catalog), "--no-progress", "--workers", "1"]) == 0
    with Catalog(str(catalog)) as cat:
        ids = {r.id: os.path.basename(r.path) for r in cat.files()}
    n = len(_names(folder))
    srv = Server(catalog, "--embed", "efficientnet-lite0", "--allow-root", folder, "--allow-anonymous-writes").start()
    try:
        assert f"{n} files lack dedup's features" in srv.output()
        assert httpx.get(srv.url + "/v1/ready").json()["without_dedup_features"] == n
        assert _check(srv.url, folder, "photo_q40.jpg", ids) == {"photo_q40.jpg": "exact"}
        r = httpx.post(srv.url + "/v1/images/from-path", json={"path": str(folder / "photo.png")}, timeout=60).json()
        assert not r["created"] and ids[r["image"]["id"]] == "photo.png"  # the same row, now with dedup's features
        assert httpx.get(srv.url + "/v1/ready").json()["without_dedup_features"] == n - 1
        assert _check(srv.url, folder, "photo_q40.jpg", ids) == {"photo_q40.jpg": "exact", "photo.png": "phash"}
    finally:
        srv.stop()
    srv = Server(catalog, "--embed", "efficientnet-lite0", "--allow-root", folder, "--allow-anonymous-writes").start()
    try:  # and it stays so after a restart
        assert f"{n - 1} files lack dedup's features" in srv.output()
        assert _check(srv.url, folder, "photo_q40.jpg", ids) == {"photo_q40.jpg": "exact", "photo.png": "phash"}
    finally:
        srv.stop()


def test_the_writer_applies_a_batch_in_order_and_replaces_failed_rows(tmp_path, folder):
    """One batch: a file indexed without dedup's features is added again (it gains them), then its bytes
    change and it is added once more; a third file's row records an indexing error and it is added. The
    live index must end as the catalog does after a restart: the changed file under its new id only, and
    the once-failed file live with a clean row."""
    import shutil
    from concurrent.futures import Future

    from imgsim_fast.catalog.store import Catalog
    from imgsim_fast.cli.main import main
    from imgsim_fast.service.ingest import DIHEDRAL_ARRAY, HASH_ARRAY, extract
    from imgsim_fast.service.live import LiveIndex
    from imgsim_fast.service.writer import AddJob, Writer

    root = tmp_path / "root"
    root.mkdir()
    for name in ("photo.png", "other.jpg", "slide_a.png"):
        shutil.copy(folder / name, root / name)
    catalog = str(tmp_path / "c.sqlite")
    assert main(["index", str(root), "--catalog", catalog, "--no-progress", "--workers", "1"]) == 0
    with Catalog(catalog, write=True) as cat, cat.transaction():
        cat.conn.execute("UPDATE files SET error = 'over the memory budget', error_kind = 'too_large' "
                         "WHERE path = ?", (str(root / "slide_a.png"),))
    with Catalog(catalog) as cat:
        old = {os.path.basename(r.path): r.id for r in cat.files()}

    def job(name):
        f = extract(str(root / name), max_pixels=None)
        tmp = tmp_path / f"tmp-{name}-{len(os.listdir(tmp_path))}"
        shutil.copy(root / name, tmp)
        f.st = os.stat(root / name)
        return (AddJob(str(tmp), f, None, source_path=str(root / name)), Future())

    first = job("photo.png")
    shutil.copy(folder / "other.jpg", root / "photo.png")  # the same path, other bytes
    batch = [first, job("photo.png"), job("slide_a.png")]
    live = LiveIndex(1, None)
    writer = Writer(catalog, str(tmp_path / "store"), live, model_name=None, dim=None)
    try:
        live.load(writer.cat, HASH_ARRAY, DIHEDRAL_ARRAY, None)
        assert set(live.row_of) == {old["photo.png"], old["other.jpg"]}  # the failed row is not live
        writer._commit(batch)  # what the writer thread does with jobs that arrive together
        results = [fut.result() for _, fut in batch]
    finally:
        writer.close()
    assert results[0][0] == old["photo.png"] and not results[0][1]
    changed, failed = results[1][0], results[2][0]
    assert results[1][1] and results[2][1]  # fresh rows
    with Catalog(catalog) as cat:
        rows = {r.id: (os.path.basename(r.path), r.error) for r in cat.files()}
        restarted = LiveIndex(1, None)
        restarted.load(cat, HASH_ARRAY, DIHEDRAL_ARRAY, None)
    assert rows[changed] == ("photo.png", None) and rows[failed] == ("slide_a.png", None)
    assert set(live.row_of) == set(restarted.row_of) == {changed, failed, old["other.jpg"]}


def test_a_delete_and_the_same_upload_in_one_batch_keep_the_stored_bytes(tmp_path, folder):
    """Uploads are stored by content: deleting one and uploading the same bytes again in one batch must leave
    the stored file in place for the new row (it was unlinked after the commit)."""
    import shutil
    from concurrent.futures import Future

    from imgsim_fast.catalog.store import Catalog
    from imgsim_fast.service.ingest import DIHEDRAL_ARRAY, HASH_ARRAY, extract
    from imgsim_fast.service.live import LiveIndex
    from imgsim_fast.service.writer import AddJob, DeleteJob, Writer, stored_path

    def upload(k):
        tmp = tmp_path / f"incoming-{k}"
        shutil.copy(folder / "photo.png", tmp)
        return AddJob(str(tmp), extract(str(tmp), max_pixels=None), None, ext=".png"), Future()

    catalog, storage = str(tmp_path / "c.sqlite"), str(tmp_path / "store")
    live = LiveIndex(1, None)
    writer = Writer(catalog, storage, live, model_name=None, dim=None)
    try:
        live.load(writer.cat, HASH_ARRAY, DIHEDRAL_ARRAY, None)
        first = upload(0)
        writer._commit([first])
        fid, _, path = first[1].result()
        assert path == stored_path(storage, first[0].features.digest, ".png") and os.path.isfile(path)
        gone, again = (DeleteJob(fid), Future()), upload(1)
        writer._commit([gone, again])  # what the writer thread does with jobs that arrive together
        new, created, new_path = again[1].result()
    finally:
        writer.close()
    assert gone[1].result() is True and created and new_path == path
    assert os.path.isfile(path)
    with Catalog(catalog) as cat:
        assert [(r.id, r.path) for r in cat.files()] == [(new, path)]
    assert set(live.row_of) == {new}


def test_the_writer_drops_an_earlier_versions_dedup_features_and_looks(tmp_path):
    # As `imgsim dedup --catalog` does: the service serves one version, and its writer drops what an
    # earlier one stored (no read of this version looks it up), keeping this version's.
    import numpy as np

    from imgsim_fast.catalog import dedup_features as dfs
    from imgsim_fast.catalog.store import Catalog
    from imgsim_fast.jobs.dedup.detect import check_key_prefix
    from imgsim_fast.jobs.dedup.keep import verdict_key_prefix
    from imgsim_fast.service.live import LiveIndex
    from imgsim_fast.service.writer import Writer

    catalog = str(tmp_path / "c.sqlite")
    now_check, now_verdict = f"{check_key_prefix()}0.015:a:b:0", f"{verdict_key_prefix()}a:b"
    with Catalog(catalog, write=True) as cat:
        cat.ensure_array("dedup-facts-p1", np.float64, 12)
        with cat.transaction():
            cat.append("dedup-facts-p1", np.zeros((2, 12)))
            dfs.store_checks(cat, {"1:128:0.015:a:b:0": [0.0, 0.0], now_check: [0.1, 0.0]})
            dfs.store_verdicts(cat, {"1:a:b": True, now_verdict: False})
    writer = Writer(catalog, str(tmp_path / "store"), LiveIndex(1, None), model_name=None, dim=None)
    writer.close()
    with Catalog(catalog) as cat:
        assert "dedup-facts-p1" not in cat.arrays() and dfs.FACTS in cat.arrays()
        assert dfs.stored_checks(cat) == {now_check: [0.1, 0.0]}
        assert dfs.stored_verdicts(cat) == {now_verdict: False}
    assert not os.path.exists(os.path.join(catalog + ".arrays", "dedup-facts-p1.bin"))
