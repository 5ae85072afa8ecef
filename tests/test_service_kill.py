"""A kill -9 during a stream of uploads loses no acknowledged image: the server answers an upload only after
its row (and the stored file) committed, so after a restart every acknowledged id is there, with its bytes."""
import hashlib
import os
import threading
import time

import httpx

from imgsim_fast.service.keys import KeyStore, keys_path
from service_server import Server, encode, picture


def test_kill_9_loses_no_acknowledged_upload(tmp_path):
    catalog = str(tmp_path / "catalog.sqlite")
    key, _ = KeyStore(keys_path(catalog)).add("ingest", ["read", "write"])
    srv = Server(catalog, "--embed", "none").start()
    acked: dict[int, str] = {}  # id -> blake2b-128 of the uploaded bytes (the catalog's digest)
    lock = threading.Lock()
    stop = threading.Event()
    errors = []

    def client(worker: int) -> None:
        with httpx.Client(base_url=srv.url, headers={"X-API-Key": key}, timeout=30) as c:
            i = 0
            while not stop.is_set():
                data = encode(picture(1000 * worker + i))
                i += 1
                try:
                    r = c.post("/v1/images", files={"file": ("p.png", data)})
                except httpx.HTTPError:
                    return  # the server died under this request: it was never acknowledged
                if r.status_code != 200:
                    errors.append(r.text)
                    return
                with lock:
                    acked[r.json()["image"]["id"]] = hashlib.blake2b(data, digest_size=16).hexdigest()

    threads = [threading.Thread(target=client, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while len(acked) < 30 and time.monotonic() < deadline:  # kill while uploads are in flight
        time.sleep(0.02)
    srv.kill9()
    stop.set()
    for t in threads:
        t.join(30)
    assert not errors, errors[:3]
    assert len(acked) >= 30, f"only {len(acked)} uploads acknowledged before the kill"

    srv = Server(catalog, "--embed", "none").start()
    try:
        with httpx.Client(base_url=srv.url, headers={"X-API-Key": key}, timeout=30) as c:
            for fid, digest in acked.items():
                r = c.get(f"/v1/images/{fid}")
                assert r.status_code == 200, (fid, r.text)
                img = r.json()
                assert img["digest"] == digest
                with open(img["path"], "rb") as f:
                    assert hashlib.blake2b(f.read(), digest_size=16).hexdigest() == digest
            assert c.get("/v1/ready").json()["files"] >= len(acked)
            # The restarted server goes on writing where the killed one stopped.
            r = c.post("/v1/images", files={"file": ("new.png", encode(picture(99999)))})
            assert r.status_code == 200 and r.json()["created"]
    finally:
        srv.stop()
    assert os.listdir(catalog + ".uploads/.incoming") == []  # half-received uploads were cleared at start
