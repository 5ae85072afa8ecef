"""The service's web page in the system chromium (Playwright): a person types a key, adds a picture, adds its
mirrored copy and sees it reported as a duplicate with thumbnails, checks a picture without storing it, and
browses the duplicate groups; a wrong key shows the server's message."""
import httpx
from PIL import Image

from imgsim_fast.service.keys import KeyStore, keys_path
from conftest import CHROMIUM, needs_browser, sync_api
from service_server import Server, picture

pytestmark = needs_browser


def test_page_add_check_and_groups(tmp_path):
    catalog = str(tmp_path / "catalog.sqlite")
    key, _ = KeyStore(keys_path(catalog)).add("page", ["read", "write"])
    original, mirrored, other = tmp_path / "original.png", tmp_path / "mirrored.png", tmp_path / "other.png"
    picture(11).save(original)
    picture(11).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mirrored)
    picture(12).save(other)
    srv = Server(catalog, "--embed", "none").start()
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM)
            page = browser.new_page()
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(srv.url + "/")
            assert "hashes only" in page.content()
            assert page.locator("#textform").count() == 0  # no CLIP model: no text search box

            page.fill("#key", "ims_000000000000_" + "x" * 43)
            page.dispatch_event("#key", "change")
            page.set_input_files("#file", str(original))
            page.click("#add")
            page.wait_for_function("document.querySelector('#status').textContent.length > 0 && "
                                   "!document.querySelector('#status').textContent.endsWith('...')")
            assert page.text_content("#status") == "unknown or revoked API key"

            page.fill("#key", key)
            page.dispatch_event("#key", "change")
            page.click("#add")
            page.wait_for_selector("#summary")
            assert page.text_content("#summary").startswith("Added as #1:")

            page.set_input_files("#file", str(mirrored))
            page.click("#add")
            page.wait_for_function("document.querySelector('#summary') && "
                                   "document.querySelector('#summary').textContent.startsWith('Added as #2')")
            assert "1 duplicate(s)" in page.text_content("#summary")
            dup = page.locator("#result .card.dup").first
            assert dup.get_attribute("data-id") == "1"
            assert "mirrored copy" in dup.text_content()
            page.wait_for_function("[...document.querySelectorAll('#result img')].every(i => i.naturalWidth > 0)")

            page.set_input_files("#file", str(other))
            page.click("#check")
            page.wait_for_function("document.querySelector('#summary') && "
                                   "document.querySelector('#summary').textContent.startsWith('0 duplicate')")
            stored = httpx.get(srv.url + "/v1/ready").json()["files"]
            assert stored == 2  # checking stores nothing

            page.click("#groups")
            page.wait_for_selector("#grouplist .group")
            assert page.text_content("#groupinfo") == "groups 1-1 of 1"
            ids = page.locator("#grouplist .card").evaluate_all("cs => cs.map(c => c.dataset.id)")
            assert sorted(ids) == ["1", "2"]
            assert errors == []
            browser.close()
    finally:
        srv.stop()
