"""Times the dedup review page for many synthetic groups in headless chromium; prints JSON.

The groups are made up (2-4 members each, every tenth group in the similar tier) and the thumbnails are
one real 160 px JPEG hard-linked once per member, so only the page itself is measured: its rendering in
Python, then in chromium the time to DOMContentLoaded and load, first contentful paint, a keeper change,
an export and a filter change. Needs playwright and the system chromium (scripts/setup.sh --test).

    .venv/bin/python scripts/review_page_load.py OUT_DIR [GROUPS=10000]
"""
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
from PIL import Image
from playwright.sync_api import sync_playwright

from imgsim_fast.reports.dedup_review import render_review

SEED = 0
WHYS = ["byte-identical copy", "same picture, 3 bits apart", "mirrored copy, 2 bits apart",
        "rotated 90°, 1 bit apart", "edited copy (embedding 0.93, 14 bits apart)"]


def synthetic_doc(n_groups: int, rng) -> dict:
    groups = []
    for g in range(n_groups):
        tier = "similar" if g % 10 == 9 else "duplicate"
        members = []
        for k in range(2 + int(rng.integers(0, 3))):
            why = "kept: the best file of the group" if k == 0 else (
                "look-alike, not a duplicate" if tier == "similar" else WHYS[(g + k) % len(WHYS)])
            members.append({"path": f"/home/user/Pictures/{g // 100:03d}/IMG_{g:05d}_{k}.jpg", "why": why,
                            "removable": k > 0 and tier == "duplicate", "reference": False, "keep": k == 0,
                            "width": 4032, "height": 3024, "format": "JPEG", "bytes": int(rng.integers(1e6, 5e6)),
                            "digest": f"{int(rng.integers(0, 2**62)):032x}", "rule": "phash"})
        groups.append({"tier": tier, "exact": False, "members": members})
    return {"method": "auto", "keep_order": ["pixels"], "files_scanned": 3 * n_groups, "errors": [], "groups": groups}


def main(out: str, n_groups: int) -> dict:
    rng = np.random.default_rng(SEED)
    doc = synthetic_doc(n_groups, rng)
    n = sum(len(g["members"]) for g in doc["groups"])
    folder = os.path.join(out, "report_files")
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((160, 120), Image.BICUBIC).save(
        os.path.join(folder, "0.jpg"), quality=75)
    for i in range(1, n):
        os.link(os.path.join(folder, "0.jpg"), os.path.join(folder, f"{i}.jpg"))
    t = time.perf_counter()
    html = render_review(doc, [(160, 120)] * n, roots=["/home/user/Pictures"])
    render_s = time.perf_counter() - t
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    res = {"groups": n_groups, "files": n, "page_bytes": len(html.encode()), "render_s": round(render_s, 2),
           "seed": SEED, "cpus": os.cpu_count(), "load_average": os.getloadavg()[0], "commit": commit, "runs": []}
    page_path = os.path.join(out, "report.html")
    with open(page_path, "w", encoding="utf-8") as f:
        f.write(html)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"))
        for _ in range(3):
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto("file://" + os.path.abspath(page_path), wait_until="load")
            nav = json.loads(page.evaluate("JSON.stringify(performance.getEntriesByType('navigation')[0])"))
            fcp = page.evaluate("(performance.getEntriesByName('first-contentful-paint')[0] || {}).startTime")
            t = time.perf_counter()
            page.locator("section.g").first.locator(".kb").last.click()
            click = time.perf_counter() - t
            t = time.perf_counter()
            with page.expect_download() as dl:
                page.click("#export")
            dl.value.save_as(os.path.join(out, "plan.json"))
            export = time.perf_counter() - t
            t = time.perf_counter()
            page.check("input[name=tier][value=similar]")
            page.locator("section.g").first.wait_for()
            filt = time.perf_counter() - t
            res["runs"].append({"domcontentloaded_ms": round(nav["domContentLoadedEventEnd"]),
                                "load_ms": round(nav["loadEventEnd"]), "first_paint_ms": round(fcp or -1),
                                "keeper_click_s": round(click, 2), "export_s": round(export, 2),
                                "filter_s": round(filt, 2)})
            page.close()
        browser.close()
    return res


if __name__ == "__main__":
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    print(json.dumps(main(out_dir, int(sys.argv[2]) if len(sys.argv) > 2 else 10000), indent=1))
