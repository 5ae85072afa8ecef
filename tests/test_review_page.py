"""The dedup review page, driven in a real browser (the system chromium through Playwright): a person
changes a keeper, unmarks a file, exports the plan; `dedup --apply` moves exactly those files and
`imgsim undo` puts every file back byte-identical. Also: filters, lazy thumbnails beside the page,
plain words, escaping, and the similar tier marking nothing."""
import glob
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from imgsim_fast.cli.main import main
from imgsim_fast.reports.dedup_review import render_review, write_html
from imgsim_fast.io.names import path_text
from conftest import CHROMIUM, needs_browser, sync_api, tree_snapshot


CAFE = os.fsdecode(b"caf\xe9 copy.jpg")  # a file name that is not UTF-8


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM)
        yield b
        b.close()


def _page(browser, url):
    page = browser.new_page(accept_downloads=True)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    return page, errors


def _rgb(path, side=640):
    with Image.open(path) as im:
        im = im.convert("RGB")
    im.thumbnail((side, side))
    return im


def _export(page, dest):
    with page.expect_download() as dl:
        page.click("#export")
    dl.value.save_as(dest)
    return json.loads(Path(dest).read_text())


@needs_browser
def test_review_page_decisions_apply_and_undo(tmp_path, photos, browser):
    src = [p for p in photos if p.endswith(".jpg")][:4]
    d = tmp_path / "album"
    (d / "sub").mkdir(parents=True)
    for i, p in enumerate(src):
        im = _rgb(p)
        if i == 1:
            im.save(d / "p1.png")  # lossless: the proposed keeper
            im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(d / "sub" / "p1_mirror.jpg", quality=85)
        else:
            im.save(d / f"p{i}.jpg", quality=90)
        if i < 2:
            im.save(d / "sub" / f"p{i}_q40.jpg", quality=40)
        if i == 0:
            im.resize((im.width // 2, im.height // 2)).save(d / "sub" / "p0_small.jpg", quality=80)
    shutil.copy(d / "p2.jpg", d / "sub" / "p2_copy.jpg")
    shutil.copy(d / "p2.jpg", os.path.join(d, "sub", CAFE))
    before = tree_snapshot(d)

    out = tmp_path / "out"
    out.mkdir()
    assert main(["dedup", str(d), "--method", "phash", "--workers", "1", "--no-progress",
                 "--json", str(out / "r.json"), "--csv", str(out / "r.csv"), "--html", str(out / "report.html")]) == 0
    doc = json.loads((out / "r.json").read_text())
    groups = {os.path.basename(g["keep"]): g for g in doc["groups"]}
    assert sorted(len(g["members"]) for g in doc["groups"]) == [3, 3, 3]
    g0 = next(g for g in doc["groups"] if any(f.endswith("p0.jpg") for f in g["files"]))
    g1 = groups["p1.png"]
    g2 = next(g for g in doc["groups"] if g is not g0 and g is not g1)
    whys = {os.path.basename(m["path"]): m["why"] for g in doc["groups"] for m in g["members"]}
    assert whys["p1_mirror.jpg"].startswith("mirrored copy, ") and "bit" in whys["p1_mirror.jpg"]
    assert whys["p2_copy.jpg"] == "byte-identical copy"
    thumbs = sorted(os.listdir(out / "report_files"))
    assert thumbs == sorted([".imgsim-review"] + [f"{i}.jpg" for i in range(9)])  # named by position only

    page, errors = _page(browser, (out / "report.html").as_uri())
    assert page.locator("section.g").count() == 3
    imgs = page.locator("img")
    assert imgs.count() == 9
    assert all(imgs.nth(k).get_attribute("loading") == "lazy" for k in range(9))
    page.wait_for_function("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
    assert page.inner_text("#count").startswith("6 files marked for removal")
    assert page.locator("figure", has_text="caf\\xe9 copy.jpg").count() == 1  # how a non-UTF-8 name is shown
    with page.expect_popup() as pop:  # clicking a picture opens the original file
        page.locator("figure", has_text="p1_mirror.jpg").locator("a.th").click()
    assert pop.value.url == (d / "sub" / "p1_mirror.jpg").as_uri()
    pop.value.close()

    # Group of p1: keep the mirrored copy instead; the PNG takes its place on the removal list.
    mirror = page.locator("figure", has_text="p1_mirror.jpg")
    mirror.locator(".kb").click()
    assert "keeper" in mirror.get_attribute("class").split()
    png = page.locator("figure", has_text="p1.png")
    assert "rm" in png.get_attribute("class").split() and png.locator(".tag").inner_text().lower() == "remove"
    assert png.locator(".why").inner_text() == "the keeper the scan proposed"  # no longer "kept: the best file"
    # Group of p0: keep p0_small.jpg after all.
    page.locator("figure", has_text="p0_small.jpg").locator(".rmc").uncheck()
    assert page.inner_text("#count").startswith("5 files marked for removal")
    # Filters: each shows only its tier.
    n_dup = sum(g["tier"] == "duplicate" for g in doc["groups"])
    page.check("input[name=tier][value=similar]")
    assert page.locator("section.g:visible").count() == 3 - n_dup
    page.check("input[name=tier][value=duplicate]")
    assert page.locator("section.g:visible").count() == n_dup
    page.check("input[name=tier][value=all]")

    plan = _export(page, tmp_path / "plan.json")
    assert not errors, errors
    page.close()
    assert plan["imgsim_plan"] == 1 and plan["roots"] == [str(d)]
    keep = {g["keep"]["path"] for g in plan["groups"]}
    gone = {e["path"] for g in plan["groups"] for e in g["remove"]}
    exact = {path_text(p): p for p in before}  # the JSON report writes names as text; the plan, exactly
    p2_removed = {exact[m["path"]] for m in g2["members"][1:]}
    assert keep == {str(d / "sub" / "p1_mirror.jpg"), str(d / "p0.jpg"), exact[g2["keep"]]}
    assert gone == {str(d / "p1.png"), str(d / "sub" / "p1_q40.jpg"), str(d / "sub" / "p0_q40.jpg")} | p2_removed
    assert os.path.join(d, "sub", CAFE) in gone | keep  # the plan names the non-UTF-8 file exactly

    q = tmp_path / "Q"
    assert main(["dedup", str(d), "--apply", str(tmp_path / "plan.json"), "--move-to", str(q)]) == 0
    after = tree_snapshot(d)
    assert set(after) == set(before) - gone  # exactly the chosen files moved; the chosen keepers stayed
    assert keep <= set(after) and str(d / "sub" / "p0_small.jpg") in after
    for p in gone:
        assert hashlib.sha256((q / os.path.relpath(p, d)).read_bytes()).hexdigest() == before[p]
    (manifest,) = glob.glob(str(q / "imgsim-manifest-*.jsonl"))
    assert main(["undo", manifest]) == 0
    assert tree_snapshot(d) == before  # every file back, byte-identical


def _doc():
    """A hand-made report: a duplicate group with a reference member, a similar group, hostile names."""
    def m(path, why, removable, reference=False):
        return {"path": path, "why": why, "removable": removable, "reference": reference, "keep": not removable,
                "rule": "", "width": 10, "height": 10, "format": "JPEG", "bytes": 1000, "digest": "ab" * 16}
    return {"method": "auto", "keep_order": ["pixels"], "files_scanned": 5, "errors": [], "groups": [
        {"tier": "duplicate", "exact": False, "members": [
            m("/r/a.jpg", "best copy", False), m("/r/<b>x</b>.jpg", "same picture, 3 bits apart", True),
            m("/r/ref/c.jpg", "rotated 90°, 1 bit apart", False, True)]},
        {"tier": "similar", "exact": False, "members": [
            m("/r/d.jpg", "best copy", False), m("/r/e.jpg", "look-alike (similar, not a duplicate)", False)]},
    ]}


@needs_browser
def test_similar_tier_marks_nothing_and_names_are_escaped(tmp_path, browser):
    doc = _doc()
    html = render_review(doc, [None] * 5, roots=["/r"], reference=["/r/ref"])
    assert "<b>" not in html  # the JSON block escapes "<" (Jinja's tojson); the page sets names as text
    (tmp_path / "p.html").write_text(html)
    page, errors = _page(browser, (tmp_path / "p.html").as_uri())
    assert page.inner_text("#count").startswith("1 file marked")
    assert page.locator("b").count() == 0 and page.locator(".p", has_text="/r/<b>x</b>.jpg").count() == 1
    assert page.locator("section.similar figure.rm").count() == 0
    assert page.locator("figure", has_text="c.jpg").locator(".rmc").count() == 0  # reference: no checkbox
    page.locator("figure", has_text="e.jpg").locator(".kb").click()  # a new keeper marks nothing
    assert page.locator("section.similar figure.rm").count() == 0
    page.check("input[name=tier][value=duplicate]")
    assert page.locator("section.similar").is_hidden() and page.locator("section.duplicate").is_visible()
    page.locator("figure", has_text="c.jpg").locator(".kb").click()  # keep the reference file instead
    page.check("input[name=tier][value=all]")
    page.locator("figure", has_text="d.jpg").locator(".rmc").check()  # a person may still decide
    plan = _export(page, tmp_path / "plan.json")
    assert not errors, errors
    assert plan["reference"] == ["/r/ref"]
    assert [(g["keep"]["path"], sorted(e["path"] for e in g["remove"])) for g in plan["groups"]] == [
        ("/r/ref/c.jpg", ["/r/<b>x</b>.jpg"]), ("/r/e.jpg", ["/r/d.jpg"])]


@needs_browser
def test_a_file_removed_in_one_group_and_kept_in_another_is_not_exported(tmp_path, browser):
    # b.jpg sits in a duplicate group (marked for removal, a.jpg kept) and keeps a look-alike group. Marking
    # that group's c.jpg too would make a plan that removes the b.jpg it keeps, which --apply refuses whole
    # (found by trying the page as a new user): the page says so and exports nothing until one is unmarked.
    def m(path, why, removable):
        return {"path": path, "why": why, "removable": removable, "reference": False, "keep": not removable,
                "rule": "", "width": 10, "height": 10, "format": "JPEG", "bytes": 1000, "digest": "ab" * 16}
    doc = {"method": "auto", "keep_order": ["content"], "files_scanned": 3, "errors": [], "groups": [
        {"tier": "duplicate", "exact": False, "members": [m("/r/a.jpg", "kept", False),
                                                         m("/r/b.jpg", "same picture, 2 bits apart", True)]},
        {"tier": "similar", "exact": False, "members": [m("/r/b.jpg", "kept", False),
                                                       m("/r/c.jpg", "look-alike", False)]}]}
    (tmp_path / "p.html").write_text(render_review(doc, [None] * 4, roots=["/r"]))
    page, errors = _page(browser, (tmp_path / "p.html").as_uri())
    downloads = []
    page.on("download", lambda d: downloads.append(d))
    page.locator("section.similar figure", has_text="c.jpg").locator(".rmc").check()
    page.click("#export")
    problem = page.inner_text("#problem")
    assert problem.startswith("Not exported: /r/b.jpg is marked for removal in group 1 and kept in group 2"), problem
    page.wait_for_timeout(300)
    assert downloads == []
    page.locator("section.duplicate figure", has_text="b.jpg").locator(".rmc").uncheck()
    plan = _export(page, tmp_path / "plan.json")
    assert page.inner_text("#problem") == "" and not errors, errors
    assert [(g["keep"]["path"], [e["path"] for e in g["remove"]]) for g in plan["groups"]] == [
        ("/r/b.jpg", ["/r/c.jpg"])]
    # Keep c.jpg in the look-alike group and mark b.jpg in both: one file removed twice, refused as well.
    similar = page.locator("section.similar")
    similar.locator("figure", has_text="c.jpg").locator(".kb").click()
    similar.locator("figure", has_text="b.jpg").locator(".rmc").check()
    page.locator("section.duplicate figure", has_text="b.jpg").locator(".rmc").check()
    page.click("#export")
    assert page.inner_text("#problem") == "Not exported: /r/b.jpg is marked for removal in groups 1 and 2. " \
                                          "Unmark it in one of them."
    page.wait_for_timeout(300)
    assert len(downloads) == 1 and not errors, errors  # only the plan exported above


@needs_browser
def test_a_hard_link_to_a_file_that_stays_frees_nothing(tmp_path, photos, browser):
    # a.png kept; b.png a hard link to it (a byte-identical copy on the page), c.png a byte copy. Removing
    # b frees nothing while a stays; removing both links would free the file once.
    d = tmp_path / "album"
    d.mkdir()
    _rgb(photos[0], 320).save(d / "a.png")
    os.link(d / "a.png", d / "b.png")
    shutil.copy(d / "a.png", d / "c.png")
    size = (d / "a.png").stat().st_size
    assert main(["dedup", str(d), "--method", "exact", "--html", str(tmp_path / "r.html"), "--workers", "1",
                 "--no-progress"]) == 0
    page, errors = _page(browser, (tmp_path / "r.html").as_uri())
    assert "c.png" not in page.locator("figure.keeper").inner_text()  # the later copy is not kept
    kb = f"{size / 1000:.1f} KB"
    assert page.inner_text("#count") == (f"2 files marked for removal (frees {kb}); "
                                         "1 is a hard link to a file that stays")
    page.locator("figure", has_text="c.png").locator(".kb").click()  # keep the copy: both links go
    assert page.inner_text("#count") == f"2 files marked for removal (frees {kb})"
    assert not errors, errors


def test_thumbnail_folder_not_made_by_imgsim_is_refused(tmp_path):
    # report.html's thumbnails go to report_files/; a folder of that name holding someone's files is theirs.
    (tmp_path / "report_files").mkdir()
    (tmp_path / "report_files" / "0.jpg").write_bytes(b"the user's own picture")

    class Empty:
        def to_dict(self):
            return {"method": "auto", "keep_order": [], "files_scanned": 0, "groups": [], "errors": []}

    with pytest.raises(ValueError, match="not made by imgsim"):
        write_html(Empty(), str(tmp_path / "report.html"))
    assert (tmp_path / "report_files" / "0.jpg").read_bytes() == b"the user's own picture"
    assert not (tmp_path / "report.html").exists()
