"""imgsim cluster (issue 14): the pigeonhole join against detect.hash_pairs, sources and shards, and on a
local 2-CPU Ray: `imgsim cluster index` + `imgsim cluster dedup` give exactly the groups, JSON and CSV of
`imgsim dedup --method phash` on 3,000 files (hash-only: embedding 3,000 files on two busy cores would take
minutes), a re-run skips written shards, and a worker killed with SIGKILL mid-job costs only a retry."""
from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import threading
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("pyarrow")

from imgsim_fast.cluster import featureset as fs  # noqa: E402
from imgsim_fast.cluster.bucket_plan import BucketPlan, plan_buckets  # noqa: E402
from imgsim_fast.cluster.join import JoinSpec, make_plans, records, split, verify_partition  # noqa: E402
from imgsim_fast.cluster.sources import list_sources, make_shards  # noqa: E402
from imgsim_fast.jobs.dedup.detect import hash_pairs  # noqa: E402


# ------------------------------------------------------------------------------------------------
# The join without Ray


def _codes(n: int, rng) -> np.ndarray:
    """(n, 8) dihedral-like codes: identity codes in planted groups, variants random or copied from
    another file's identity (a mirrored copy), so every kind of pair occurs."""
    centres = rng.integers(0, 2**64, max(1, n // 4), dtype=np.uint64)
    ident = centres[rng.integers(0, len(centres), n)]
    for _ in range(6):
        flip = rng.random(n) < 0.5
        ident[flip] ^= np.uint64(1) << rng.integers(0, 64, flip.sum()).astype(np.uint64)
    out = np.concatenate([ident[:, None], rng.integers(0, 2**64, (n, 7), dtype=np.uint64)], axis=1)
    if n >= 4:
        out[1, 4] = out[3, 0] ^ np.uint64(5)   # file 1 mirrored is file 3, 2 bits off
        out[2, 0] = out[0, 0]                  # an identical code
    return out


def _join_locally(ph: np.ndarray, spec: JoinSpec, digests=None, plans=None):
    rec = records(np.arange(len(ph)), ph, digests, spec, plans)
    raw_i, raw_j = [], []
    for part in split(rec, spec.partitions):
        i, j, _ = verify_partition(spec, [part[: len(part) // 3], part[len(part) // 3:]], plans)
        raw_i.append(i)
        raw_j.append(j)
    return np.concatenate(raw_i), np.concatenate(raw_j)


@pytest.mark.parametrize("n", [0, 1, 7, 63, 64, 65, 700])
@pytest.mark.parametrize("radius,dihedral", [(18, 8), (10, None), (0, 0)])
def test_join_equals_single_machine_hash_pairs(n, radius, dihedral):
    # detect.hash_pairs (one MIH self-join over all 8 variants) is the oracle: the same set, and without
    # flips every pair leaves the reduce side exactly once (the first-agreeing-substring rule).
    rng = np.random.default_rng(n * 31 + radius)
    ph = _codes(n, rng)
    spec = JoinSpec(radius, dihedral, partitions=3)
    i, j = _join_locally(ph, spec)
    a, b = hash_pairs(ph.reshape(n, 8, 1), radius, dihedral)
    assert set(zip(i.tolist(), j.tolist())) == set(zip(a.tolist(), b.tolist()))
    assert (i < j).all()
    if dihedral is None:
        assert len(i) == len(set(zip(i.tolist(), j.tolist())))
    if n >= 65 and radius == 18:
        assert len(a) > n  # planted groups: a join that found nothing would fail here


@pytest.mark.parametrize("dihedral", [None, 6])
def test_pairs_in_large_buckets_go_through_mih(dihedral, monkeypatch):
    # Near-identical codes fill buckets past SCAN_MAX (lowered to 64 here, so the test stays small), and
    # their variants (other files' codes, one bit off) make identity x variant buckets past SCAN_MAX^2:
    # both multi-index paths (self_join, radius) must agree with the oracle too.
    from imgsim_fast.cluster import join
    from imgsim_fast.indexes.mih import HammingIndex

    monkeypatch.setattr(join, "SCAN_MAX", 64)
    used = []
    for name in ("self_join", "radius"):
        real = getattr(HammingIndex, name)
        monkeypatch.setattr(HammingIndex, name, lambda self, *a, _r=real, _n=name, **k: used.append(_n) or _r(self, *a, **k))
    rng = np.random.default_rng(7)
    base = rng.integers(0, 2**64, dtype=np.uint64)
    ident = np.full(5000, base, np.uint64)
    for _ in range(12):
        ident ^= np.uint64(1) << rng.integers(0, 64, 5000).astype(np.uint64)
    variants = [np.roll(ident, k) ^ (np.uint64(1) << rng.integers(0, 64, 5000).astype(np.uint64)) for k in range(1, 8)]
    ph = np.stack([ident, *variants], axis=1)
    spec = JoinSpec(8, dihedral, partitions=2)
    i, j = _join_locally(ph, spec)
    assert set(used) == ({"self_join"} if dihedral is None else {"self_join", "radius"})
    a, b = hash_pairs(ph.reshape(-1, 8, 1), 8, dihedral)
    assert len(a) > 10_000 and set(zip(i.tolist(), j.tolist())) == set(zip(a.tolist(), b.tolist()))


def test_substrings_cover_the_code_disjointly():
    p = np.random.default_rng(3).uniform(0.02, 0.98, 64)
    info = tuple(-np.log2(p * p + (1 - p) * (1 - p)))
    for r in (0, 1, 8, 10, 18, 63):
        for plan in (BucketPlan(r), BucketPlan(r, info)):
            for path in [p for p in ((), (0,), (r, 0)) if plan.splittable(p)]:
                lay = plan.layout(path)
                used = [m for d in range(len(path)) for m in [plan.layout(path[:d])[path[d]]]]
                assert len(lay) == r + 1 and all(lay)
                assert sum(bin(m).count("1") for m in lay + tuple(used)) == 64
                assert int(np.bitwise_or.reduce(np.array(lay + tuple(used), np.uint64))) == 2**64 - 1
    # Bit statistics: the most skewed bits are spread over the substrings, not left together.
    skewed = BucketPlan(3, tuple(0.1 if b < 16 else 1.0 for b in range(64))).layout()
    assert all(bin(m & 0xFFFF).count("1") == 4 for m in skewed)
    with pytest.raises(ValueError):
        BucketPlan(64)


def _skewed_codes(n: int, rng) -> np.ndarray:
    """pHash-like identity codes (bits set with probability 0.1-0.9, planted groups of ~8 within 6 flips),
    as (n, 8) with random variants: skewed bits make a few buckets far larger than the rest."""
    p = rng.uniform(0.1, 0.9, 64)
    centres = np.zeros(max(1, n // 8), np.uint64)
    for b in range(64):
        centres |= (rng.random(len(centres)) < p[b]).astype(np.uint64) << np.uint64(b)
    ident = centres[rng.integers(0, len(centres), n)]
    for _ in range(6):
        flip = rng.random(n) < 0.5
        ident[flip] ^= np.uint64(1) << rng.integers(0, 64, flip.sum()).astype(np.uint64)
    return np.concatenate([ident[:, None], rng.integers(0, 2**64, (n, 7), dtype=np.uint64)], axis=1)


@pytest.mark.parametrize("radius,dihedral,max_bucket", [(4, None, 10), (10, None, 150), (6, 4, 40)])
def test_cut_buckets_give_every_pair_once(radius, dihedral, max_bucket):
    # A plan with a tiny bucket bound (from a sample of a third of the codes, as join() samples) cuts the
    # largest buckets again, down to several levels; brute force over all pairs is the oracle, and without
    # flips each pair must leave exactly one bucket (its canonical one).
    from imgsim_fast.indexes.hamming import hamming_matrix

    rng = np.random.default_rng(radius)
    n = 1500
    ph = _skewed_codes(n, rng)
    spec = JoinSpec(radius, dihedral, partitions=3, max_bucket=max_bucket)
    pick = rng.choice(n, n // 3, replace=False)
    plans = make_plans(spec, n, ph[pick, 0], ph[pick].ravel())
    heavy = plans[0].heavy
    assert heavy  # the split path runs: a bound that cut nothing would not test it
    rec = records(np.arange(n), ph, None, spec, plans)
    ident = rec[rec["tag"] == 0]
    assert max(len(plans[0].path_of(int(k), int(c))) for k, c in zip(ident["key"][::7], ident["code"][::7])) >= 2
    assert len(rec) > n * ((radius + 1) + (0 if dihedral is None else 8 * (dihedral + 1)))
    i, j = _join_locally(ph, spec, plans=plans)
    d = hamming_matrix(ph[:, :1].copy(), ph[:, :1].copy())
    want = set(zip(*[x.tolist() for x in np.nonzero(np.triu(d <= radius, 1))]))
    if dihedral is not None:
        dv = hamming_matrix(ph[:, :1].copy(), ph.reshape(-1, 1)).reshape(n, n, 8)[:, :, 1:].min(axis=2)
        a, b = np.nonzero((dv <= dihedral) & ~np.eye(n, dtype=bool))
        want |= set(zip(np.minimum(a, b).tolist(), np.maximum(a, b).tolist()))
    got = list(zip(i.tolist(), j.tolist()))
    assert set(got) == want and len(want) > n
    if dihedral is None:
        assert len(got) == len(want)
    # The bound holds where cutting can shrink a bucket: no identity bucket of the cut plan is far past it,
    # while the plain plan's largest bucket is.
    def largest(p):
        return max(np.unique(k, return_counts=True)[1].max() for k, _, _ in p.keyed(ph[:, 0], np.arange(n)))
    assert largest(plans[0]) < largest(BucketPlan(radius))


def test_a_plan_does_not_cut_a_bucket_of_near_duplicates():
    # 400 codes within 3 bits of one centre agree on most substrings: cutting their bucket would copy it
    # r + 1 times without shrinking it, so the plan leaves it whole (and the join stays exact).
    rng = np.random.default_rng(5)
    base = rng.integers(0, 2**64, dtype=np.uint64)
    codes = np.full(400, base, np.uint64)
    for _ in range(3):
        codes ^= np.uint64(1) << rng.integers(0, 64, 400).astype(np.uint64)
    plan = plan_buckets(codes, len(codes), 10, 50)
    assert not plan.heavy
    ph = np.concatenate([codes[:, None], rng.integers(0, 2**64, (400, 7), dtype=np.uint64)], axis=1)
    spec = JoinSpec(10, None, partitions=2, max_bucket=50)
    i, j = _join_locally(ph, spec, plans={0: plan})
    assert len(i) == 400 * 399 // 2


def test_exact_copies_pair_with_the_first_of_their_digest():
    digests = ["ab" * 16, "cd" * 16, "ab" * 16, "ab" * 15 + "ac", "ab" * 16]
    spec = JoinSpec(None, None, digests=True, partitions=2)
    i, j = _join_locally(np.zeros((5, 8), np.uint64), spec, digests)
    assert sorted(zip(i.tolist(), j.tolist())) == [(0, 2), (0, 4)]


# ------------------------------------------------------------------------------------------------
# Sources


def test_sources_folders_lists_and_urls(tmp_path):
    for name in ("b/2.jpg", "a/1.png", "a/skip.txt", "c.jpg"):
        p = tmp_path / name
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"x")
    walk = list_sources([str(tmp_path)])
    assert [os.path.relpath(p, tmp_path) for p in walk] == ["a/1.png", "b/2.jpg", "c.jpg"]
    lst = tmp_path / "list.txt"
    lst.write_text(f"{tmp_path}/c.jpg\n# a comment\nfile://{tmp_path}/b\n")
    assert list_sources([f"@{lst}"]) == [f"{tmp_path}/c.jpg", f"file://{tmp_path}/b/2.jpg"]
    assert list_sources([str(tmp_path / "c.jpg"), str(tmp_path)])[0] == str(tmp_path / "c.jpg")  # once
    with pytest.raises(ValueError, match="no such"):
        list_sources([str(tmp_path / "missing")])
    shards = make_shards(walk, 2)
    assert [(s.start, len(s.paths)) for s in shards] == [(0, 2), (2, 1)] and shards[1].name == "shard-000001.parquet"


def test_a_url_row_has_the_features_of_its_file(photos):
    from imgsim_fast.cluster.extract import extract_shard

    local = extract_shard(5, photos[:2])
    url = extract_shard(5, ["file://" + p for p in photos[:2]])
    assert local[0] == url[0] == [5, 6]
    assert [f.path for f in url[1]] == ["file://" + p for p in photos[:2]]
    assert [f.digest for f in url[1]] == [f.digest for f in local[1]]
    assert (url[2] == local[2]).all() and (url[3] == local[3]).all()


# ------------------------------------------------------------------------------------------------
# On a local 2-CPU Ray


def _make_album(root, photos, n: int = 3000, seed: int = 0) -> None:
    """Real photos with the edits dedup must catch, byte copies, two unreadable files, and distinct
    synthetic pictures (random 8x8 colour grids, whose pHash codes are close to uniform) up to n files."""
    from PIL import Image, ImageEnhance, ImageOps

    rng = np.random.default_rng(seed)
    edits = [lambda im: im, lambda im: im.resize((150, 100)), ImageOps.mirror, ImageOps.flip,
             lambda im: im.rotate(90, expand=True), lambda im: ImageEnhance.Brightness(im).enhance(1.25),
             lambda im: ImageEnhance.Contrast(im).enhance(0.8), lambda im: im.crop((8, 6, 192, 144)),
             lambda im: ImageOps.expand(im, (0, 20), fill="black")]
    k = 0
    os.makedirs(f"{root}/photos", exist_ok=True)
    for pi, path in enumerate(photos):
        with Image.open(path) as im:
            base = ImageOps.fit(im.convert("RGB"), (200, 150))
        for e, f in enumerate(edits):
            f(base).save(f"{root}/photos/p{pi:02d}_{e}.jpg", quality=70 + 3 * e)
            k += 1
    for c in range(20):
        os.makedirs(f"{root}/copies", exist_ok=True)
        shutil.copy(f"{root}/photos/p{c % len(photos):02d}_0.jpg", f"{root}/copies/copy{c}.jpg")
        k += 1
    for bad in ("broken1.jpg", "broken2.png"):
        with open(f"{root}/copies/{bad}", "wb") as f:
            f.write(b"\xff\xd8\xff\xe0 not really an image")
        k += 1
    while k < n:
        d = f"{root}/synthetic/{k // 500}"
        os.makedirs(d, exist_ok=True)
        grid = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(grid).resize((64, 64), Image.Resampling.BICUBIC).save(
            f"{d}/s{k:05d}.{'png' if k % 5 == 0 else 'jpg'}")
        k += 1


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    from imgsim_fast.cluster.session import _quiet_data

    _quiet_data()
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def album(tmp_path_factory, photos):
    root = str(tmp_path_factory.mktemp("cluster-album"))
    _make_album(f"{root}/album", photos)
    return root


def _cli(*argv) -> int:
    from imgsim_fast.cli.main import main

    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def single_machine(album):
    """`imgsim dedup --method phash` on the album: the reference answer."""
    rc = _cli("dedup", f"{album}/album", "--method", "phash", "--workers", 2, "--no-progress",
              "--json", f"{album}/single.json", "--csv", f"{album}/single.csv")
    assert rc == 1  # the two unreadable files
    with open(f"{album}/single.json") as f:
        return json.load(f)


def test_cluster_dedup_gives_the_groups_of_dedup(album, single_machine, local_ray, capsys):
    t0 = time.perf_counter()
    assert _cli("cluster", "index", f"{album}/album", "--out", f"{album}/feats", "--shard-size", 200) == 1
    assert "3000 files in 15 shards: 15 written" in capsys.readouterr().out
    rc = _cli("cluster", "dedup", f"{album}/feats", "--json", f"{album}/cluster.json",
              "--csv", f"{album}/cluster.csv", "--plan", f"{album}/plan.json")
    assert rc == 1
    with open(f"{album}/cluster.json") as f:
        doc = json.load(f)
    dup = [g for g in single_machine["groups"] if g["tier"] == "duplicate"]
    assert len(dup) >= len(os.listdir(f"{album}/album/photos")) // 9  # each photo's edits form a group
    assert any(len({m["digest"] for m in g["members"]}) < len(g["members"]) for g in dup)  # byte copies
    assert len(single_machine["errors"]) == 2
    assert doc == single_machine
    with open(f"{album}/cluster.csv", "rb") as a, open(f"{album}/single.csv", "rb") as b:
        assert a.read() == b.read()
    # The plan is one `imgsim dedup --apply` accepts, removing exactly the removable members.
    from imgsim_fast.jobs.dedup.plan import check_plan, load_plan, stale_entries

    plan = load_plan(f"{album}/plan.json")
    check_plan(plan)
    assert not stale_entries(plan)
    removable = sorted(m["path"] for g in doc["groups"] for m in g["members"] if m["removable"])
    assert sorted(e.path for e in plan.removals) == removable and removable
    assert _cli("dedup", "--apply", f"{album}/plan.json") == 0
    print(f"cluster index + dedup: {time.perf_counter() - t0:.1f} s")


def test_rerun_skips_written_shards(album, local_ray, capsys):
    out = f"{album}/feats"
    if not os.path.isdir(out):
        pytest.skip("needs the feature set of test_cluster_dedup_gives_the_groups_of_dedup")
    assert _cli("cluster", "index", f"{album}/album", "--out", out, "--shard-size", 200) == 0
    assert "0 written, 15 already there" in capsys.readouterr().out
    before = fs.read_features(out)[0]
    os.unlink(f"{out}/shard-000003.parquet")
    _cli("cluster", "index", f"{album}/album", "--out", out, "--shard-size", 200)
    assert "1 written, 14 already there" in capsys.readouterr().out
    assert fs.read_features(out)[0].facts == before.facts
    assert not glob.glob(f"{out}/.*.tmp")
    # Another request into the same folder is refused in one line, not mixed in.
    assert _cli("cluster", "index", f"{album}/album", "--out", out, "--shard-size", 100) == 2
    assert "another request" in capsys.readouterr().err



def test_cluster_with_embeddings_gives_the_groups_of_dedup(tmp_path, photos, local_ray, capsys):
    # The default method on the cluster: its features' embeddings come from a Ray actor (the model loaded
    # once per actor), and the groups are those of `imgsim dedup` on the same folder.
    from PIL import Image, ImageOps

    os.makedirs(f"{tmp_path}/album")
    for pi, path in enumerate(photos[:4]):
        with Image.open(path) as im:
            base = ImageOps.fit(im.convert("RGB"), (320, 240))
        base.save(f"{tmp_path}/album/p{pi}.jpg", quality=92)
        base.crop((20, 15, 300, 225)).save(f"{tmp_path}/album/p{pi}_crop.jpg", quality=85)
        ImageOps.mirror(base).save(f"{tmp_path}/album/p{pi}_mirror.jpg", quality=85)
    assert _cli("dedup", f"{tmp_path}/album", "--no-progress", "--json", f"{tmp_path}/single.json") == 0
    assert _cli("cluster", "index", f"{tmp_path}/album", "--out", f"{tmp_path}/feats", "--embed",
                "--shard-size", 5) == 0
    assert "12 files in 3 shards: 3 written" in capsys.readouterr().out
    assert _cli("cluster", "dedup", f"{tmp_path}/feats", "--method", "auto", "--json", f"{tmp_path}/cluster.json") == 0
    with open(f"{tmp_path}/single.json") as a, open(f"{tmp_path}/cluster.json") as b:
        single, cluster = json.load(a), json.load(b)

    def cosines(doc):  # the same up to float rounding: the actor embeds in other batches than dedup does
        return [m.pop("cosine") for g in doc["groups"] for m in g["members"]]

    cs, cc = cosines(single), cosines(cluster)
    assert [c is None for c in cs] == [c is None for c in cc] and any(c is not None for c in cs)
    assert all(abs(a - b) <= 1e-3 for a, b in zip(cs, cc) if a is not None)
    assert cluster == single
    assert sum(len(g["members"]) for g in single["groups"] if g["tier"] == "duplicate") >= 8

def _task_workers(name: str) -> list[int]:
    """Pids of Ray worker processes whose title names our task (Ray sets it to ray::<operator>)."""
    out = []
    for d in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            with open(d, "rb") as f:
                cmd = f.read().decode(errors="replace")
        except OSError:
            continue
        if cmd.startswith("ray::") and name in cmd:
            out.append(int(d.split("/")[2]))
    return out


def test_a_worker_killed_mid_job_costs_only_a_retry(album, single_machine, local_ray):
    out = f"{album}/feats-killed"
    result = {}
    job = threading.Thread(target=lambda: result.update(rc=_cli("cluster", "index", f"{album}/album",
                                                                  "--out", out, "--shard-size", 100)))
    job.start()
    killed = None
    deadline = time.monotonic() + 50
    while killed is None and job.is_alive() and time.monotonic() < deadline:
        written = len(glob.glob(f"{out}/shard-*.parquet"))
        pids = _task_workers("_decode_and_write")
        if 1 <= written < 25 and pids:
            os.kill(pids[0], signal.SIGKILL)  # mid-job: some shards written, one in progress in this worker
            killed = pids[0]
        time.sleep(0.05)
    job.join(120)
    assert killed is not None, "no worker was caught mid-job"
    assert result["rc"] == 1 and len(glob.glob(f"{out}/shard-*.parquet")) == 30
    # The killed shard was run again: every row is there, and dedup gives the single-machine answer.
    assert len(fs.read_features(out)[0]) == 2998
    doc_path = f"{album}/killed.json"
    assert _cli("cluster", "dedup", out, "--json", doc_path) == 1
    with open(doc_path) as f:
        assert json.load(f) == single_machine


@pytest.mark.parametrize("argv,needle", [
    (["cluster", "dedup", "{tmp}/missing"], "not an imgsim feature set"),
    (["cluster", "index", "{tmp}/missing", "--out", "{tmp}/out"], "no such file or folder"),
    (["cluster", "index", "@{tmp}/missing.txt", "--out", "{tmp}/out"], "no such file list"),
    (["cluster", "dedup", "{tmp}", "--method", "bogus"], "invalid choice"),
    (["cluster", "dedup", "{tmp}", "--similar-threshold", "65"], "--similar-threshold"),
    (["cluster", "index", "{tmp}", "--out", "{tmp}/out", "--shard-size", "0"], "--shard-size"),
    (["cluster", "index", "{tmp}", "--out", "{tmp}/x.jpg"], "is not a folder"),
])
def test_cluster_commands_refuse_bad_input_in_one_line(tmp_path, capsys, argv, needle):
    # All refused before Ray starts: a nonexistent source creates no --out folder either.
    (tmp_path / "x.jpg").write_bytes(b"x")
    try:
        rc = _cli(*[a.format(tmp=tmp_path) for a in argv])
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and needle in err, err
    assert not (tmp_path / "out").exists()


def test_partitioned_embedding_search_matches_the_single_machine_one(local_ray):
    # detect.embedding_pairs is the oracle. One cell probed by all: the same pairs exactly. 8 cells, each
    # vector probing its 3 nearest: recall stays high (a search that lost its cells would not).
    from imgsim_fast.cluster.embed_join import embedding_join, given
    from imgsim_fast.jobs.dedup.detect import embedding_pairs

    rng = np.random.default_rng(5)
    centres = rng.normal(size=(40, 32))
    emb = centres[rng.integers(0, 40, 600)] + 0.35 * rng.normal(size=(600, 32))
    centre = emb + 0.2 * rng.normal(size=emb.shape)
    emb, centre = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (emb, centre))
    a, b = embedding_pairs(emb.astype(np.float32), 0.8, 8, centre.astype(np.float32))
    want = set(zip(a.tolist(), b.tolist()))
    rows = np.arange(600)
    inputs = [(given, (rows[s:s + 200], emb[s:s + 200], centre[s:s + 200])) for s in (0, 200, 400)]
    sample = np.concatenate([emb, centre])
    i, j = embedding_join(inputs, sample, 0.8, 8, cells=1, probes=1, partitions=2, ray=local_ray)
    got = set(zip(i.tolist(), j.tolist()))
    assert len(want) > 1000
    # fp16 on the wire: a pair at the cut or the k-th place can flip; allow a few of thousands.
    assert len(got ^ want) <= len(want) // 500, (len(got - want), len(want - got))
    i, j = embedding_join(inputs, sample, 0.8, 8, cells=8, probes=3, partitions=3, ray=local_ray)
    got = set(zip(i.tolist(), j.tolist()))
    assert len(got & want) >= 0.95 * len(want) and len(got - want) <= len(want) // 100


@pytest.mark.parametrize("meta,needle", [
    ({"imgsim_features": 2}, "older imgsim (feature set format 2"),
    ({"imgsim_features": fs.FORMAT_VERSION, "prep": "p1"}, "another preparation of the pictures (p1"),
    ({"imgsim_features": fs.FORMAT_VERSION}, "another preparation of the pictures (None"),
])
def test_a_feature_set_of_another_preparation_is_refused(tmp_path, capsys, meta, needle):
    # Features made by another trim (extract.PREP_TAG) hash, align and embed other pixels: neither read by
    # dedup nor added to by a resumed index, each refused in one line before Ray starts.
    out = tmp_path / "feats"
    out.mkdir()
    (out / fs.META_NAME).write_text(json.dumps({**meta, "sources": [str(tmp_path)], "extensions": None,
                                                "shard_size": 200, "model": None}))
    (tmp_path / "x.jpg").write_bytes(b"x")
    for argv in (["cluster", "dedup", str(out)], ["cluster", "index", str(tmp_path), "--out", str(out)]):
        assert _cli(*argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err, err
