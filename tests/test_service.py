"""`imgsim serve` over HTTP: the real server in a subprocess on a free port, every endpoint, and the bad cases of
issue 13 (no key, a read-only key writing, an oversized upload, a decompression bomb, a non-image, a path
escape, an unknown id, malformed JSON), each answered with a JSON error and never a traceback."""
import json
import os

import httpx
import pytest
from PIL import Image

from imgsim_fast.cli.main import main
from imgsim_fast.service.keys import KeyStore, keys_path
from service_server import Server, encode, picture, png_bomb

MAX_UPLOAD = 1 << 20  # the server under test takes uploads up to 1 MiB


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("serve")
    catalog = str(d / "catalog.sqlite")
    root = d / "root"
    root.mkdir()
    outside = d / "outside"
    outside.mkdir()
    keys = KeyStore(keys_path(catalog))
    rw, _ = keys.add("pipeline", ["read", "write"])
    ro, _ = keys.add("reader", ["read"])
    gone, gone_key = keys.add("old", ["read", "write"])
    keys.revoke(gone_key.id)
    srv = Server(catalog, "--embed", "none", "--allow-root", root, "--max-upload-mb", MAX_UPLOAD / (1 << 20)).start()
    yield dict(url=srv.url, catalog=catalog, root=root, outside=outside, rw=rw, ro=ro, revoked=gone, server=srv)
    srv.stop()


def call(env, method, path, key="rw", **kw):
    headers = kw.pop("headers", {})
    if key:
        headers["X-API-Key"] = env[key]
    r = httpx.request(method, env["url"] + path, headers=headers, timeout=30, **kw)
    assert "Traceback" not in r.text
    return r


def upload(env, data: bytes, path="/v1/images", key="rw", name="x.png", **fields):
    return call(env, "POST", path, key, files={"file": (name, data, "application/octet-stream")}, data=fields)


def error_of(r, status: int, code: str):
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    return body


# Pictures: an original, its byte-identical copy, a mirrored copy, a smaller JPEG copy, and an unrelated one.
ORIGINAL = encode(picture(1))
MIRRORED = encode(picture(1).transpose(Image.Transpose.FLIP_LEFT_RIGHT))
JPEG_COPY = encode(picture(1).resize((240, 180)), "JPEG", quality=70)
OTHER = encode(picture(2))


@pytest.fixture(scope="module")
def added(env):
    """The collection: original, mirrored copy, JPEG copy, and another picture, added in this order."""
    out = {}
    for name, data in (("original", ORIGINAL), ("mirrored", MIRRORED), ("jpeg", JPEG_COPY), ("other", OTHER)):
        r = upload(env, data)
        assert r.status_code == 200, r.text
        out[name] = r.json()
    return out


def test_health_ready_and_metrics(env, added):
    assert call(env, "GET", "/v1/health", key=None).json()["status"] == "ok"
    ready = call(env, "GET", "/v1/ready", key=None).json()
    assert ready["status"] == "ready" and ready["files"] == 4 and ready["embedding"] is None
    text = call(env, "GET", "/metrics", key=None).text
    assert 'imgsim_requests_total{method="POST",route="/v1/images",status="200"} 4.0' in text
    assert "imgsim_write_queue_depth 0.0" in text
    assert "imgsim_index_files 4.0" in text
    assert "imgsim_write_batch_jobs_count" in text
    assert call(env, "GET", "/openapi.json", key=None).json()["paths"]["/v1/images"]["post"]["requestBody"]


def test_add_reports_duplicates_with_rule_and_distances(env, added):
    o = added["original"]
    assert o["created"] and o["duplicates"] == [] and o["similar"] == []
    assert o["image"]["width"] == 320 and o["image"]["format"] == "PNG" and len(o["image"]["hashes"]["phash"]) == 16
    assert os.path.isfile(o["image"]["path"])  # the row points at the stored upload
    oid = o["image"]["id"]
    m = added["mirrored"]["duplicates"]
    assert [(d["id"], d["rule"], d["transform"]) for d in m] == [(oid, "flip", "mirror-lr")]
    assert m[0]["phash_distance"] > 10 and m[0]["flip_distance"] <= 8  # detect.DEFAULTS: phash 10, dihedral 8
    j = {d["id"]: d for d in added["jpeg"]["duplicates"]}
    assert j[oid]["rule"] == "phash" and j[oid]["phash_distance"] <= 10
    assert added["other"]["duplicates"] == [] and added["other"]["similar"] == []

    again = upload(env, ORIGINAL).json()  # the same bytes again: the stored entry, an exact duplicate of itself
    assert not again["created"] and again["image"]["id"] == oid
    assert all(d["id"] != oid for d in again["duplicates"])
    assert call(env, "GET", "/v1/ready").json()["files"] == 4


def test_check_answers_without_storing(env, added):
    r = upload(env, ORIGINAL, "/v1/check", key="ro").json()
    oid = added["original"]["image"]["id"]
    rules = {d["id"]: d["rule"] for d in r["duplicates"]}
    assert rules[oid] == "exact" and rules[added["jpeg"]["image"]["id"]] == "phash"
    assert rules[added["mirrored"]["image"]["id"]] == "flip"
    fresh = upload(env, encode(picture(3)), "/v1/check", key="ro").json()
    assert fresh["duplicates"] == [] and fresh["width"] == 320
    assert call(env, "GET", "/v1/ready").json()["files"] == 4


def test_get_list_and_unknown_id(env, added):
    oid = added["original"]["image"]["id"]
    img = call(env, "GET", f"/v1/images/{oid}", key="ro").json()
    assert img["digest"] == added["original"]["image"]["digest"] and img["hashes"]["phash"]
    p1 = call(env, "GET", "/v1/images?limit=3", key="ro").json()
    assert len(p1["items"]) == 3 and p1["next_after"] == p1["items"][-1]["id"]
    p2 = call(env, "GET", f"/v1/images?limit=3&after={p1['next_after']}", key="ro").json()
    ids = [i["id"] for i in p1["items"] + p2["items"]]
    assert len(ids) == 4 and ids == sorted(ids) and p2["next_after"] is None
    error_of(call(env, "GET", "/v1/images/999999", key="ro"), 404, "not_found")
    error_of(call(env, "GET", "/v1/images/abc", key="ro"), 422, "invalid_request")
    error_of(call(env, "GET", "/v1/images?limit=0", key="ro"), 422, "invalid_request")
    error_of(call(env, "GET", "/v1/nothing-here", key="ro"), 404, "not_found")
    thumb = call(env, "GET", f"/v1/images/{oid}/thumbnail?size=64", key="ro")
    assert thumb.headers["content-type"] == "image/jpeg" and thumb.content[:2] == b"\xff\xd8"


def test_search_by_id_upload_and_filters(env, added):
    oid, jid = added["original"]["image"]["id"], added["jpeg"]["image"]["id"]
    r = call(env, "POST", "/v1/search", key="ro", json={"id": oid, "k": 2}).json()
    assert r["method"] == "phash" and [h["rank"] for h in r["hits"]] == [1, 2]
    assert r["hits"][0]["id"] == jid and oid not in [h["id"] for h in r["hits"]]
    assert r["hits"][0]["score"] == pytest.approx(1 - r["hits"][0]["distance"] / 64)
    r = upload(env, ORIGINAL, "/v1/search/upload", key="ro", k="3").json()
    assert r["hits"][0]["id"] == oid and r["hits"][0]["distance"] == 0 and len(r["hits"]) == 3
    only_jpeg = {"where": {"format": "JPEG"}}
    r = upload(env, ORIGINAL, "/v1/search/upload", key="ro", filters=json.dumps(only_jpeg)).json()
    assert [h["id"] for h in r["hits"]] == [jid]
    r = call(env, "POST", "/v1/search", key="ro", json={"id": oid, "filters": {"where": {"width": {"min": 300}}}})
    assert {h["id"] for h in r.json()["hits"]} == {added["mirrored"]["image"]["id"], added["other"]["image"]["id"]}
    error_of(call(env, "POST", "/v1/search", key="ro", json={"id": oid, "filters": {"where": {"nope": 1}}}),
             422, "bad_filter")
    error_of(call(env, "POST", "/v1/search", key="ro", json={"id": 999999}), 404, "not_found")
    error_of(call(env, "POST", "/v1/search", key="ro", json={"text": "a red car"}), 400, "no_text_search")
    error_of(call(env, "POST", "/v1/search", key="ro", json={"id": oid, "text": "x"}), 422, "invalid_request")
    error_of(upload(env, ORIGINAL, "/v1/search/upload", key="ro", filters="{not json"), 422, "invalid_request")


def test_duplicate_groups(env, added):
    r = call(env, "GET", "/v1/duplicates", key="ro").json()
    assert r["total"] == 1
    g = r["groups"][0]
    ids = {added[n]["image"]["id"] for n in ("original", "mirrored", "jpeg")}
    assert g["tier"] == "duplicate" and {m["id"] for m in g["members"]} == ids
    assert g["members"][0]["rule"] == "keeper"  # the largest picture; the JPEG copy is smaller
    assert g["members"][0]["id"] != added["jpeg"]["image"]["id"]
    assert call(env, "GET", "/v1/duplicates?offset=1", key="ro").json()["groups"] == []


def test_server_side_paths_are_confined(env, tmp_path):
    root, outside = env["root"], env["outside"]
    inside = root / "in.png"
    inside.write_bytes(encode(picture(5)))
    secret = outside / "secret.png"
    secret.write_bytes(encode(picture(6)))
    os.symlink(secret, root / "link.png")
    os.symlink(outside, root / "linkdir")
    r = call(env, "POST", "/v1/images/from-path", json={"path": str(inside)})
    assert r.status_code == 200, r.text
    assert r.json()["image"]["path"] == os.path.realpath(inside) and r.json()["created"]
    assert call(env, "POST", "/v1/images/from-path", json={"path": str(inside)}).json()["created"] is False
    for escape in (str(root / ".." / "outside" / "secret.png"), str(root / "link.png"),
                   str(root / "linkdir" / "secret.png"), str(secret), "/etc/passwd"):
        error_of(call(env, "POST", "/v1/images/from-path", json={"path": escape}), 403, "path_not_allowed")
    error_of(call(env, "POST", "/v1/images/from-path", json={"path": "in.png"}), 400, "bad_path")
    error_of(call(env, "POST", "/v1/images/from-path", json={"path": str(root / "missing.png")}), 404, "no_such_file")
    error_of(call(env, "POST", "/v1/images/from-path", key="ro", json={"path": str(inside)}), 403, "scope")
    call(env, "DELETE", f"/v1/images/{r.json()['image']['id']}")
    assert inside.exists()  # deleting an entry never deletes a file the server did not store


def test_bad_requests_are_json_4xx(env, added):
    error_of(upload(env, ORIGINAL, key=None), 401, "no_key")
    error_of(call(env, "GET", "/v1/images", key=None), 401, "no_key")
    error_of(upload(env, ORIGINAL, key="ro"), 403, "scope")
    error_of(upload(env, ORIGINAL, key="revoked"), 401, "bad_key")
    error_of(call(env, "GET", "/v1/images", headers={"Authorization": "Bearer ims_0123456789ab_" + "x" * 43},
                  key=None), 401, "bad_key")
    assert call(env, "GET", "/v1/images", headers={"Authorization": "Bearer " + env["ro"]}, key=None).status_code == 200
    big = os.urandom(MAX_UPLOAD + 1000)
    error_of(upload(env, big), 413, "too_large")
    error_of(upload(env, png_bomb()), 413, "too_many_pixels")
    error_of(upload(env, b"just some text, not a picture\n" * 10), 415, "not_an_image")
    error_of(upload(env, b""), 400, "empty_file")
    error_of(upload(env, encode(picture(1))[:300]), 422, "undecodable_image")
    error_of(call(env, "POST", "/v1/images", content=ORIGINAL, headers={"Content-Type": "image/png"}), 415,
             "not_multipart")
    error_of(call(env, "POST", "/v1/images", data={"note": "no file"}, files={"other": ("a", b"b")}), 400,
             "bad_upload")
    error_of(call(env, "POST", "/v1/search", key="ro", content=b'{"id": 1,', headers={"Content-Type": "application/json"}),
             400, "malformed_json")
    error_of(call(env, "POST", "/v1/images/from-path", content=b"[", headers={"Content-Type": "application/json"}),
             400, "malformed_json")
    assert call(env, "GET", "/v1/ready").json()["files"] == 4  # none of it stored anything
    assert os.listdir(os.path.join(env["catalog"] + ".uploads", ".incoming")) == []  # nor left a temporary file


def test_delete(env, added):
    r = upload(env, encode(picture(7))).json()
    fid, path = r["image"]["id"], r["image"]["path"]
    assert os.path.isfile(path)
    error_of(call(env, "DELETE", f"/v1/images/{fid}", key="ro"), 403, "scope")
    assert call(env, "DELETE", f"/v1/images/{fid}").status_code == 204
    error_of(call(env, "GET", f"/v1/images/{fid}"), 404, "not_found")
    error_of(call(env, "DELETE", f"/v1/images/{fid}"), 404, "not_found")
    assert not os.path.exists(path)
    assert fid not in [h["id"] for h in upload(env, encode(picture(7)), "/v1/search/upload", key="ro").json()["hits"]]


def test_keys_cli(tmp_path, capsys):
    cat = str(tmp_path / "c.sqlite")
    assert main(["serve", "keys", "add", "--catalog", cat, "--scopes", "read", "--name", "ci"]) == 0
    token = capsys.readouterr().out.strip()
    store = KeyStore(keys_path(cat))
    assert store.check(token).scopes == ["read"]
    assert oct(os.stat(keys_path(cat)).st_mode & 0o777) == "0o600"
    with open(keys_path(cat)) as f:
        assert token.split("_", 2)[2] not in f.read()  # only the hash is stored
    assert main(["serve", "keys", "list", "--catalog", cat]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [k["name"] for k in listed] == ["ci"] and "sha256" not in listed[0]
    assert main(["serve", "keys", "revoke", "--catalog", cat, listed[0]["id"]]) == 0
    assert store.check(token) is None
    assert main(["serve", "keys", "revoke", "--catalog", cat, "nope"]) == 2
    assert main(["serve", "keys", "add", "--catalog", cat, "--scopes", "admin"]) == 2
    assert "scopes must be among read, write" in capsys.readouterr().err


def test_clip_text_search_and_anonymous_writes(tmp_path, tiny_clip):
    """With a CLIP model: embeddings stored and compared (cosine reported), text search ranks by the text
    tower; --allow-anonymous-writes lets calls without a key read and write."""
    srv = Server(tmp_path / "c.sqlite", "--embed", tiny_clip, "--allow-anonymous-writes").start()
    try:
        env = {"url": srv.url}
        ready = call(env, "GET", "/v1/ready", key=None).json()
        assert ready["text_search"] and ready["embedding"]
        first = upload(env, ORIGINAL, key=None).json()
        mirrored = upload(env, MIRRORED, key=None).json()
        d = mirrored["duplicates"][0]
        assert d["id"] == first["image"]["id"] and d["rule"] == "flip" and -1 <= d["cosine"] <= 1
        upload(env, OTHER, key=None)
        r = call(env, "POST", "/v1/search", key=None, json={"text": "a red car", "k": 5}).json()
        assert r["method"].startswith("embed:") and len(r["hits"]) == 3
        scores = [h["score"] for h in r["hits"]]
        assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)
        by_id = call(env, "POST", "/v1/search", key=None, json={"id": first["image"]["id"], "k": 5}).json()
        assert by_id["method"] == r["method"] and len(by_id["hits"]) == 2 and by_id["hits"][0]["distance"] is None
    finally:
        srv.stop()
