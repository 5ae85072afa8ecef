"""Deep-embedding benchmarks: end-to-end CPU embeddings/s against a naive loop, and HNSW against faiss.

1. Embeddings/s for the default model (EfficientNet-Lite0) on real photos, end to end (decode, preprocess,
   model), ours (`embed_paths`: reduced-size JPEG decoding in worker processes, batches) against the naive
   way: PIL open + full decode + the same preprocessing + the same model, one image at a time. Same run,
   same files, same model object, so only the pipeline differs.
2. kNN queries/s at recall@10 >= 0.95 on random unit vectors: our VectorIndex (hnswlib) against
   faiss.IndexHNSWFlat with the same M and efConstruction, each with the smallest ef from one grid
   reaching the target, faiss's ef then raised until it matches our recall. One thread each.
"""
from __future__ import annotations

import glob
import os
import time

import numpy as np

from imgsim_fast.bench.report import Row, best_time

_EXTS = (".jpg", ".jpeg")
_EF_GRID = (10, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768)


def _photos(photos_src: str) -> list[str]:
    files = sorted(p for p in glob.glob(os.path.join(photos_src, "**", "*"), recursive=True)
                   if p.lower().endswith(_EXTS) and os.path.isfile(p))
    if not files:
        raise FileNotFoundError(f"no JPEG photos under {photos_src}")
    return files


def embedding_rows(photos_src: str, quick: bool = False) -> list[Row]:
    import torch
    from PIL import Image

    from imgsim_fast.features.embedding import embed_paths, load_model
    from imgsim_fast.features.embedding.batching import default_workers
    from imgsim_fast.features.embedding.preprocess import prepare_image

    # JPEGs only (what photo collections hold, and where reduced-size decoding applies), cycled up to a
    # fixed count so the pool start-up is amortised as it is on a real folder.
    photos = _photos(photos_src)
    count = 16 if quick else 64
    files = [photos[i % len(photos)] for i in range(count)]
    model = load_model("efficientnet-lite0", device="cpu")
    workers = default_workers(model.device)
    embed_paths(files[:2], model, workers=0)  # warm up oneDNN kernels for both batch shapes used

    def ours():
        r = embed_paths(files, model, workers=workers, progress=False)
        if r.failures:
            raise RuntimeError(f"bench photos failed to load: {r.failures[:3]}")

    def naive():
        for p in files:
            with Image.open(p) as im:
                a = prepare_image(im.convert("RGB"), model.spec)
            model.embed_pixels(torch.from_numpy(a[None]))

    repeat = 1 if quick else 2
    t_ours = best_time(ours, repeat=repeat)
    t_naive = best_time(naive, repeat=repeat)
    params = {"model": model.name, "device": str(model.device), "files": len(files),
              "distinct_files": len(photos), "workers": workers,
              "torch_threads": torch.get_num_threads(), "batch_size": 32, "photos": photos_src}
    rows = [Row("embedding", f"EfficientNet-Lite0 end to end, CPU, {len(files)} JPEGs", len(files) / t_ours,
                "images/s", "naive PIL + batch-1 loop", len(files) / t_naive, params)]
    return rows + _runtime_rows(files, model, quick)


def _runtime_rows(files: list[str], model, quick: bool) -> list[Row]:
    """The forward pass alone on one prepared batch of 32: the runtime load_model picked against torch."""
    import torch

    from imgsim_fast.features.embedding import load_model
    from imgsim_fast.features.embedding.preprocess import prepare_image
    from imgsim_fast.io.loading import load_image

    if not model.runtime.startswith("onnxruntime"):
        print(f"bench: EfficientNet-Lite0 runs on {model.runtime} here; no runtime comparison")
        return []
    ref = load_model("efficientnet-lite0", device="cpu", runtime="torch")
    batch = torch.from_numpy(np.stack([prepare_image(load_image(p), model.spec) for p in files[:32]]))
    for m in (model, ref):
        m.embed_pixels(batch)  # warm-up
    repeat = 1 if quick else 3
    t_ours = best_time(lambda: model.embed_pixels(batch), repeat=repeat)
    t_torch = best_time(lambda: ref.embed_pixels(batch), repeat=repeat)
    diff = float((model.embed_pixels(batch) - ref.embed_pixels(batch)).abs().max())
    params = {"runtime": model.runtime, "peer_runtime": ref.runtime, "batch": len(batch),
              "torch_threads": torch.get_num_threads(), "max_abs_diff": diff}
    return [Row("embedding", "EfficientNet-Lite0 forward pass, CPU", len(batch) / t_ours, "images/s",
                f"the same model on {ref.runtime}", len(batch) / t_torch, params,
                note=f"unit vectors {diff:.1e} apart at most")]


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / truth.shape[1] for f, t in zip(found, truth)]))


def hnsw_rows(n: int, d: int = 64, nq: int = 1000, k: int = 10, target: float = 0.95, seed: int = 0) -> list[Row]:
    from imgsim_fast.indexes.vectors import VectorIndex

    rng = np.random.default_rng(seed)
    db = rng.standard_normal((n, d)).astype(np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    q = rng.standard_normal((nq, d)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    sims = q @ db.T
    truth = np.argpartition(-sims, k, axis=1)[:, :k]
    del sims

    index = VectorIndex(d, exact_threshold=0, threads=-1, seed=seed)
    t0 = time.perf_counter()
    index.add(db, np.arange(n))
    build_ours = time.perf_counter() - t0
    index.threads = 1
    ours_ef, ours_rec = None, 0.0
    for ef in _EF_GRID:
        index.ef = ef
        ours_rec = _recall(index.knn(q, k)[0], truth)
        if ours_rec >= target:
            ours_ef = ef
            break
    t_ours = best_time(lambda: index.knn(q, k))
    params = {"n": n, "dim": d, "k": k, "queries": nq, "threads": 1, "M": index.M,
              "ef_construction": index.ef_construction, "ef": ours_ef, "recall": round(ours_rec, 4),
              "build_s": round(build_ours, 2), "data": "i.i.d. Gaussian unit vectors", "seed": seed}
    peer = peer_qps = None
    try:
        import faiss
    except ImportError:
        print("bench: faiss not installed; the HNSW peer column is left empty")
    else:
        faiss.omp_set_num_threads(os.cpu_count() or 1)
        fidx = faiss.IndexHNSWFlat(d, index.M, faiss.METRIC_INNER_PRODUCT)
        fidx.hnsw.efConstruction = index.ef_construction
        t0 = time.perf_counter()
        fidx.add(db)
        params["faiss_build_s"] = round(time.perf_counter() - t0, 2)
        faiss.omp_set_num_threads(1)
        f_rec = 0.0
        for ef in _EF_GRID:
            fidx.hnsw.efSearch = ef
            f_rec = _recall(fidx.search(q, k)[1], truth)
            if f_rec >= ours_rec:
                break
        params.update(faiss_ef=int(fidx.hnsw.efSearch), faiss_recall=round(f_rec, 4))
        peer, peer_qps = "faiss.IndexHNSWFlat", nq / best_time(lambda: fidx.search(q, k))
    return [Row("hnsw", f"top-{k} of {n:,} x {d}-d, recall@{k} {ours_rec:.3f}", nq / t_ours, "queries/s",
                peer, peer_qps, params)]


def run(photos_src: str, quick: bool = False) -> list[Row]:
    rows = embedding_rows(photos_src, quick=quick)
    rows += hnsw_rows(20_000 if quick else 100_000, nq=300 if quick else 1000)
    return rows
