"""Service load test: the real `imgsim serve` in a subprocess, driven by concurrent HTTP clients (httpx).

Catalogs of 10^5 and 10^6 entries with synthetic pHash codes (rows written straight into the catalog, as
`imgsim index` would write them; their files need not exist for adding, checking and searching), hash-only
server (`--embed none`: the embedding forward pass would measure the CNN, which the embedding section does).
Each client loops over a mix: add a new picture (25%), check an unseen one (25%), search by a stored id
(25%), get a record (25%). Reported per endpoint: requests/s, p50 and p99 latency, at 1, 8 and 32 clients.
Clients and server share the machine's cores, so the numbers are what one box does end to end.
"""
from __future__ import annotations

import asyncio
import io
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

from imgsim_fast.bench.report import Row

SECTION = "serve"
ENDPOINTS = ("add", "check", "search", "get")


def _synthetic_catalog(path: str, n: int, seed: int) -> None:
    """n file rows with random 64-bit pHash codes (and their 8 variants, the same code: no flip evidence), and
    dedup's features, which the duplicate test reads: the same random code as the trimmed one, and one shared
    thumbnail and facts row (rows of byte-identical files are shared the same way), so the catalog's size on
    disk does not grow by 16 KiB a file."""
    from imgsim_fast.catalog import dedup_features as dd
    from imgsim_fast.catalog.store import Catalog
    from imgsim_fast.features.extract import THUMB_SIDE
    from imgsim_fast.service.ingest import DIHEDRAL_ARRAY, HASH_ARRAY

    rng = np.random.default_rng(seed)
    chunk = 100_000
    with Catalog(path, write=True) as cat:
        cat.declare_batch_rows(chunk)
        cat.ensure_array(HASH_ARRAY, np.uint64, 1, {"kind": "phash", "hash_size": 8, "mode": "fast"})
        cat.ensure_array(DIHEDRAL_ARRAY, np.uint64, 8, {"dihedral_of": HASH_ARRAY})
        dd.ensure_arrays(cat)
        with cat.transaction():
            thumb = cat.append(dd.THUMBS, rng.integers(0, 256, (1, THUMB_SIDE * THUMB_SIDE), dtype=np.uint8))
            facts = cat.append(dd.FACTS, np.array([[640, 480, 640 * 480, 0, 0, 1, 1, 90, 0, 1.0, 1, 0]], np.float64))
        for s in range(0, n, chunk):
            m = min(chunk, n - s)
            codes = rng.integers(0, 2**63, (m, 1), dtype=np.int64).astype(np.uint64) * 2 + rng.integers(0, 2, (m, 1)).astype(np.uint64)
            with cat.transaction():
                cat.conn.executemany(
                    "INSERT INTO files(id, path, size, mtime_ns, dev, inode, digest, width, height, format) "
                    "VALUES (?, ?, 1000, 0, 0, ?, ?, 640, 480, 'JPEG')",
                    [(s + i + 1, f"/synthetic/{s + i:08d}.jpg", s + i, f"{s + i:032x}") for i in range(m)])
                r0 = cat.append(HASH_ARRAY, codes)
                r8 = cat.append(DIHEDRAL_ARRAY, np.repeat(codes, 8, axis=1))
                d8 = cat.append(dd.PHASH8, np.repeat(codes, 8, axis=1))
                fids = range(s + 1, s + m + 1)
                cat.conn.executemany("INSERT INTO vectors(file_id, array, row) VALUES (?, ?, ?)",
                                     [(f, HASH_ARRAY, r0 + i) for i, f in enumerate(fids)] +
                                     [(f, DIHEDRAL_ARRAY, r8 + i) for i, f in enumerate(fids)] +
                                     [(f, dd.PHASH8, d8 + i) for i, f in enumerate(fids)] +
                                     [(f, dd.THUMBS, thumb) for f in fids] + [(f, dd.FACTS, facts) for f in fids])


def _pictures(n: int, seed: int) -> list[bytes]:
    """Small distinct PNGs (160 x 120 blurred noise), what an ingest pipeline might send after resizing."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        im = Image.fromarray((rng.random((6, 8, 3)) * 255).astype(np.uint8)).resize((160, 120), Image.Resampling.BICUBIC)
        b = io.BytesIO()
        im.save(b, "PNG")
        out.append(b.getvalue())
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(catalog: str, key: str) -> tuple[subprocess.Popen, str, float]:
    import httpx

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "imgsim_fast", "serve", "--catalog", catalog, "--port", str(port),
                             "--embed", "none"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(url + "/v1/ready", timeout=1).status_code == 200:
                return proc, url, time.perf_counter() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.2)


async def _load(url: str, key: str, clients: int, seconds: float, n: int, pics: list[bytes], seed: int) -> dict:
    import httpx

    lat = {e: [] for e in ENDPOINTS}
    fails = {e: 0 for e in ENDPOINTS}
    counter = iter(range(10**9))
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client(c: httpx.AsyncClient, rnd: random.Random):
        while time.perf_counter() < deadline:
            op = rnd.choice(ENDPOINTS)
            t0 = time.perf_counter()
            if op == "add":
                r = await c.post("/v1/images", files={"file": ("p.png", pics[next(counter) % len(pics)])})
            elif op == "check":
                r = await c.post("/v1/check", files={"file": ("p.png", pics[rnd.randrange(len(pics))])})
            elif op == "search":
                r = await c.post("/v1/search", json={"id": rnd.randint(1, n), "k": 10})
            else:
                r = await c.get(f"/v1/images/{rnd.randint(1, n)}")
            lat[op].append(time.perf_counter() - t0)
            if r.status_code != 200:
                fails[op] += 1

    async with httpx.AsyncClient(base_url=url, headers={"X-API-Key": key}, timeout=60, limits=limits) as c:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(c, random.Random(seed * 1000 + i)) for i in range(clients)))
        wall = time.perf_counter() - t0
    return {"wall": wall, "lat": lat, "fails": fails}


def run(quick: bool = False, seed: int = 0, sizes=None, clients=(1, 8, 32), seconds: float | None = None) -> list[Row]:
    from imgsim_fast.service.keys import KeyStore, keys_path

    sizes = sizes or ((10_000,) if quick else (100_000, 1_000_000))
    seconds = seconds or (3.0 if quick else 8.0)
    rows = []
    for n in sizes:
        d = tempfile.mkdtemp(prefix="imgsim-serve-bench-")
        try:
            catalog = os.path.join(d, "catalog.sqlite")
            t0 = time.perf_counter()
            _synthetic_catalog(catalog, n, seed)
            build = time.perf_counter() - t0
            key, _ = KeyStore(keys_path(catalog)).add("bench", ["read", "write"])
            # Enough distinct pictures that adds stay new; checks of the same set hit their stored copies.
            pics = _pictures(3000 if not quick else 300, seed + n)
            proc, url, startup = _start(catalog, key)
            try:
                rows.append(Row(SECTION, f"{n:,} files: server start to ready", startup, "s",
                                params={"files": n, "catalog_build_s": round(build, 1)}))
                for c in clients:
                    res = asyncio.run(_load(url, key, c, seconds, n, pics, seed))
                    total = sum(len(v) for v in res["lat"].values())
                    rows.append(Row(SECTION, f"{n:,} files, {c} clients: all requests", total / res["wall"], "req/s",
                                    params={"files": n, "clients": c, "seconds": round(res["wall"], 2)}))
                    for e in ENDPOINTS:
                        v = np.array(res["lat"][e]) * 1000
                        if not len(v):
                            continue
                        p50, p99 = np.percentile(v, 50), np.percentile(v, 99)
                        rows.append(Row(SECTION, f"{n:,} files, {c} clients: {e}", len(v) / res["wall"], "req/s",
                                        params={"files": n, "clients": c, "endpoint": e, "p50_ms": round(p50, 2),
                                                "p99_ms": round(p99, 2), "requests": len(v),
                                                "non_200": res["fails"][e]},
                                        note=f"p50 {p50:.1f} ms, p99 {p99:.1f} ms"))
            finally:
                proc.terminate()
                proc.wait(30)
        finally:
            shutil.rmtree(d, ignore_errors=True)
    return rows
