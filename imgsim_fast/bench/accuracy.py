"""Dedup accuracy: pair precision / recall / F1, per edit kind and per look-alike kind, ours against imagehash.

`python -m imgsim_fast.bench accuracy` (wired by the lead) or `python -m imgsim_fast.bench.accuracy
[--quick] [--tune] [--json FILE]`. The corpus (bench/corpus.py) is split by source picture: thresholds
were tuned on the "tune" half (`--tune` prints the grid search), and the headline rows are the held-out
"test" half.

Definitions. A method's predicted pairs are all pairs inside its groups (for imagehash, which has no
groups in imagededup, every pair within its threshold, as imagededup's find_duplicates reports them).
A pair is true when both files come from one source picture. Precision = true predicted pairs / predicted
pairs; recall = true predicted pairs / all true pairs (originals and edits, every pair of a family);
per-kind recall counts only (original, edited copy of that kind) pairs of the ordinary families: "is this
copy grouped with its original".

Look-alikes (issue 10; corpus.py, lookalikes.py): per look-alike kind (screenshot, slide, icon, object,
chart, burst), the false pairs that involve a file of that kind per 1,000 files of the split (a pair between
two kinds counts for both), and the recall of that kind's own copies (its JPEG and half-size copy with its
original). Lower false pairs per 1,000 files is better; a pair between a screenshot and a photo counts.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time

import numpy as np

from imgsim_fast.bench.corpus import AUDIT_SEED, EDIT_KINDS, LOOKALIKE_KINDS, CorpusFile, build_corpus
from imgsim_fast.bench.report import Row, machine_info

__all__ = ["run", "evaluate", "IMAGEHASH_THRESHOLD"]

IMAGEHASH_THRESHOLD = 10  # imagededup's PHash default max_distance_threshold
METHODS = ("auto", "phash", "embedding", "exact")


def _pairs_from_groups(groups) -> set[tuple[int, int]]:
    out = set()
    for g in groups:
        for a, b in itertools.combinations(sorted(g.members), 2):
            out.add((a, b))
    return out


def evaluate(pred: set[tuple[int, int]], files: list[CorpusFile], split: str | None) -> dict:
    """Pair metrics of `pred` (index pairs into files) restricted to `split` (None: all files)."""
    keep = [split is None or f.split == split for f in files]
    idx = [i for i, k in enumerate(keep) if k]
    fam = [f.family for f in files]
    pred = {(a, b) for a, b in pred if keep[a] and keep[b]}
    tp = sum(1 for a, b in pred if fam[a] == fam[b])
    by_fam: dict[str, list[int]] = {}
    for i in idx:
        by_fam.setdefault(fam[i], []).append(i)
    n_true = sum(len(v) * (len(v) - 1) // 2 for v in by_fam.values())
    p = tp / len(pred) if pred else 1.0
    r = tp / n_true if n_true else 1.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    orig = {files[i].family: i for i in idx if files[i].kind == "original"}

    def found(sel: list[int]) -> float:
        return sum(1 for i in sel if (min(i, orig[fam[i]]), max(i, orig[fam[i]])) in pred) / len(sel)

    per_kind = {}
    for kind in EDIT_KINDS:
        for level in ("mild", "strong", None):
            # Ordinary families only: look-alikes have two of the edits, and their copies are counted below.
            sel = [i for i in idx if files[i].kind == kind and not files[i].negative
                   and (level is None or files[i].level == level)]
            if sel:
                per_kind[kind + ("" if level is None else "/" + level)] = found(sel)
    false = [(a, b) for a, b in pred if fam[a] != fam[b]]
    per_lookalike = {}
    # The audit corpus adds theme variants (corpus.audit_pictures) to the generated kinds.
    for nk in dict.fromkeys(LOOKALIKE_KINDS + tuple(sorted({files[i].negative for i in idx} - {""}))):
        members = [i for i in idx if files[i].negative == nk]
        if not members:
            continue
        fk = sorted((files[a].path, files[b].path) for a, b in false if nk in (files[a].negative, files[b].negative))
        copies = [i for i in members if files[i].kind != "original"]
        per_lookalike[nk] = {"files": len(members), "families": len({fam[i] for i in members}),
                             "false_pairs": len(fk), "false_per_1k_files": 1000 * len(fk) / len(idx),
                             "copy_recall": found(copies) if copies else None, "false_examples": fk[:5]}
    fp = sorted((files[a].path, files[b].path) for a, b in false)
    return {"precision": p, "recall": r, "f1": f1, "pairs": len(pred), "true_pairs": n_true, "files": len(idx),
            "false_pairs": len(false), "false_per_1k_files": 1000 * len(false) / len(idx) if idx else 0.0,
            "per_kind": per_kind, "per_lookalike": per_lookalike, "false_examples": fp[:10]}


def imagehash_pairs(files: list[CorpusFile], threshold: int = IMAGEHASH_THRESHOLD) -> tuple[set, float]:
    """imagehash.phash of every file (opened as imagededup does) and every pair within threshold."""
    import imagehash
    from PIL import Image

    t0 = time.perf_counter()
    bits = []
    for f in files:
        with Image.open(f.path) as im:
            bits.append(imagehash.phash(im).hash.ravel())
    dt = time.perf_counter() - t0
    b = np.array(bits, dtype=bool)
    d = (b[:, None, :] != b[None, :, :]).sum(axis=2)
    ii, jj = np.nonzero(np.triu(d <= threshold, k=1))
    return set(zip(ii.tolist(), jj.tolist())), dt


def our_groups(features, method: str, thresholds=None, flips: bool = True, tier: str = "duplicate",
               learned: bool = True) -> list:
    """Dedup's groups of one tier, exactly as `imgsim dedup` groups them, keeper first (learned=False: with
    the raw embedding cosine, the hand rule the learned similarity replaced)."""
    from imgsim_fast.jobs.dedup import DEFAULTS, group_features

    res = group_features(features, method, thresholds or DEFAULTS, flips=flips, learned=learned)
    return [g for g in res.groups if g.tier == tier]


def our_pairs(features, method: str, thresholds=None, flips: bool = True, tier: str = "duplicate",
              learned: bool = True):
    """Pairs inside dedup's groups of one tier (our_groups)."""
    return _pairs_from_groups(our_groups(features, method, thresholds, flips, tier, learned))


def keepers(groups, files: list[CorpusFile], split: str | None) -> dict:
    """Of the split's ordinary families, in how many the original is in a group, and in how many of those it
    is the keeper (members[0]): keep-best on a corpus of PNG and JPEG originals with twenty edits each,
    beside the keep bench's one-step copies of JPEGs."""
    first = {m: g.members[0] for g in groups for m in g.members}
    originals = [i for i, f in enumerate(files) if f.kind == "original" and not f.negative
                 and (split is None or f.split == split)]
    grouped = [i for i in originals if i in first]
    return {"groups_with_original": len(grouped), "original_kept": sum(first[i] == i for i in grouped)}


def run(photos_src: str, cache_dir: str, quick: bool = False, details: dict | None = None,
        audit: bool = False) -> list[Row]:
    """Build/reuse the corpus, run every method and imagehash on it, return benchmark rows.

    details: if a dict, receives the full metrics per method and split (for --json). audit: on the audit
    corpus (corpus.audit_pictures: packages nothing was tuned on), one split, instead of the two halves.
    """
    from imgsim_fast.features.extract import compute_features

    files = build_corpus(photos_src, cache_dir, quick=quick, audit=audit)
    splits = ("audit",) if audit else ("test", "tune", None)
    head, label = ("audit", "audit") if audit else ("test", "held-out")
    t0 = time.perf_counter()
    feats = compute_features([f.path for f in files], embed=True, progress=False)
    t_feat = time.perf_counter() - t0
    by_path = {os.path.abspath(f.path): i for i, f in enumerate(files)}
    order = [by_path[os.path.abspath(p)] for p in feats.paths]
    if len(order) != len(files):
        raise RuntimeError(f"{len(files) - len(order)} corpus files failed to load: {feats.failures[:3]}")
    files = [files[i] for i in order]  # align labels with feature rows
    ih_pred, t_ih = imagehash_pairs(files)
    results = {"imagehash.phash@10": {s: evaluate(ih_pred, files, s) for s in splits}}
    for m in METHODS:
        groups = our_groups(feats, m)
        pred = _pairs_from_groups(groups)
        results[m] = {s: {**evaluate(pred, files, s), "keep": keepers(groups, files, s)} for s in splits}
    pred = our_pairs(feats, "phash", flips=False)
    results["phash-noflip"] = {s: evaluate(pred, files, s) for s in splits}
    pred = our_pairs(feats, "auto", learned=False)  # the hand rule on the raw cosine, as it was
    results["auto-raw-cosine"] = {s: evaluate(pred, files, s) for s in splits}
    if details is not None:
        details.update({"results": {m: {str(s): v for s, v in r.items()} for m, r in results.items()},
                        "files": len(files), "families": len({f.family for f in files}),
                        "features_s": t_feat, "imagehash_s": t_ih, "splits": [str(s) for s in splits],
                        # the corpus seed; the commit says which dedup code
                        "machine": machine_info(seed=AUDIT_SEED if audit else 0)})
    ih = results["imagehash.phash@10"][head]
    rows = []
    params = {"files": len(files), "families": len({f.family for f in files}),
              "split": "audit" if audit else "test (held out)"}
    for m in ("auto", "auto-raw-cosine", "phash", "phash-noflip", "embedding", "exact"):
        r = results[m][head]
        for metric in ("f1", "precision", "recall"):
            rows.append(Row("accuracy", f"{m} {metric} ({label})", round(r[metric], 4), "",
                            "imagehash.phash@10", round(ih[metric], 4), dict(params)))
    if not audit:
        # Pairs across the two halves exist only in the whole corpus: a false match between a tune picture
        # and a test picture shows here and in neither split.
        r, ih_all = results["auto"][None], results["imagehash.phash@10"][None]
        for metric in ("f1", "precision", "recall"):
            rows.append(Row("accuracy", f"auto {metric} (whole corpus)", round(r[metric], 4), "",
                            "imagehash.phash@10", round(ih_all[metric], 4), dict(params, split="all")))
    r = results["auto"][head]
    rows.append(Row("accuracy", f"auto original kept ({label})",
                    round(r["keep"]["original_kept"] / max(1, r["keep"]["groups_with_original"]), 4), "",
                    params={"split": head, **r["keep"]}))
    for k, v in r["per_kind"].items():
        if "/" not in k or k in ("crop/strong", "letterbox/strong", "rot90/strong", "mirror/strong"):
            rows.append(Row("accuracy", f"auto recall {k}", round(v, 4), "", "imagehash.phash@10",
                            round(ih["per_kind"][k], 4), {"split": head}))
    # Lower is better here, so imagehash's figure goes in the note: the table's ratio assumes higher is better.
    for k, v in r["per_lookalike"].items():
        rows.append(Row("accuracy", f"auto false pairs/1k files: {k}", round(v["false_per_1k_files"], 2),
                        "per 1k files", params={"split": head, "files": r["files"], "false_pairs": v["false_pairs"]},
                        note=f"imagehash.phash@10 {ih['per_lookalike'][k]['false_per_1k_files']:.2f}"))
        if v["copy_recall"] is not None:
            rows.append(Row("accuracy", f"auto recall of {k} copies", round(v["copy_recall"], 4), "",
                            "imagehash.phash@10", round(ih["per_lookalike"][k]["copy_recall"], 4), {"split": head}))
    return rows


def _print_details(details: dict) -> None:
    res = details["results"]
    names = list(res)
    splits = details.get("splits", ["test", "tune", "None"])
    head = splits[0]
    print(f"\n{details['files']} files, {details['families']} families; features {details['features_s']:.1f} s")
    for split in splits:
        print(f"\nsplit {split}:")
        for n in names:
            r = res[n][split]
            print(f"  {n:20} P={r['precision']:.4f} R={r['recall']:.4f} F1={r['f1']:.4f} "
                  f"({r['false_pairs']} false of {r['pairs']} pairs)")
    for split in (s for s in splits if s != "None"):
        k = res["auto"][split]["keep"]
        print(f"auto, {split} split: the original kept in {k['original_kept']} of the {k['groups_with_original']} "
              "groups holding one")
    print(f"\nper-kind recall, {head} split ({' | '.join(names)})")
    for k in res["auto"][head]["per_kind"]:
        print(f"  {k:18} " + " ".join(f"{res[n][head]['per_kind'][k]:6.3f}" for n in names))
    # The whole corpus adds the pairs across the halves: the split is per picture, so two neighbouring burst
    # frames are in different halves as often as not.
    for split in splits:
        print(f"\nlook-alikes, {'whole corpus' if split == 'None' else split + ' split'}: false pairs per 1,000 files (a false pair with a file of that kind) "
              f"/ recall of their copies ({' | '.join(names)})")
        total = res["auto"][split]
        print(f"  {'all false pairs':18} " + " ".join(f"{res[n][split]['false_per_1k_files']:7.1f}     " for n in names)
              + f"   ({total['files']} files)")
        for k, v in total["per_lookalike"].items():
            print(f"  {k + ' (' + str(v['families']) + ')':18} " + " ".join(
                f"{res[n][split]['per_lookalike'][k]['false_per_1k_files']:7.1f} "
                f"{_fmt(res[n][split]['per_lookalike'][k]['copy_recall'])}" for n in names))
    for k, v in res["auto"][head]["per_lookalike"].items():
        for ex in v["false_examples"][:2]:
            print(f"  auto false {k}: {os.path.basename(ex[0])} ~ {os.path.basename(ex[1])}")
    for ex in res["auto"][head]["false_examples"]:
        print(f"  auto false pair: {os.path.basename(ex[0])} ~ {os.path.basename(ex[1])}")


def _fmt(x: float | None) -> str:
    return "  - " if x is None else f"{x:.2f}"


def tune(photos_src: str, cache_dir: str, quick: bool = False) -> None:
    """Grid search of the auto thresholds on the tune split (pair test only, no grouping): the evidence
    behind detect.DEFAULTS. Prints the best settings at precision >= 0.995."""
    from imgsim_fast.features.extract import compute_features

    files = build_corpus(photos_src, cache_dir, quick=quick)
    files = [f for f in files if f.split == "tune"]
    feats = compute_features([f.path for f in files], embed=True, progress=False)
    pos = {os.path.abspath(f.path): f for f in files}
    lab = [pos[os.path.abspath(p)] for p in feats.paths]
    n = len(lab)
    bits = np.unpackbits(feats.phash8.view(np.uint8).reshape(n, 8, 8), axis=2).astype(bool)
    d = np.stack([(bits[:, None, 0, :] != bits[None, :, k, :]).sum(axis=2) for k in range(8)])
    d0, dk = d[0], d[1:].min(axis=0)
    dk = np.minimum(dk, dk.T)
    c = feats.embeddings @ feats.embeddings.T
    if feats.centre_embeddings is not None:  # the crosswise cosine of PairJudge.cosine
        x = feats.embeddings @ feats.centre_embeddings.T
        from imgsim_fast.jobs.dedup.detect import DEFAULTS as _D

        c = np.maximum(c, np.maximum(x, x.T) - _D.centre_discount)
    fam = np.array([f.family for f in lab])
    same = fam[:, None] == fam[None, :]
    iu = np.triu(np.ones((n, n), bool), k=1)
    best = []
    grid = itertools.product((8, 10, 12), (6, 8, 10), (24, 28), (0.5, 0.55, 0.6, 0.65), (0.01, 0.015, 0.02, 0.025),
                             (0.85, 0.88, 0.9))
    for p0, pk, cp, cc, sl, ec in grid:
        need = cc + sl * np.maximum(0, d0 - p0)
        m = (d0 <= p0) | (dk <= pk) | ((d0 <= cp) & (c >= need)) | (c >= ec)
        pred = m & iu
        tp = int((pred & same).sum())
        prec = tp / max(1, int(pred.sum()))
        rec = tp / int((same & iu).sum())
        best.append((2 * prec * rec / (prec + rec + 1e-12), prec, rec, (p0, pk, cp, cc, sl, ec)))
    best.sort(reverse=True)
    print("F1, precision, recall, (phash, dihedral, confirm_phash, confirm_cos, confirm_slope, embed_cos) "
          "- tune split, pair test over every pair of the split")
    for b in [b for b in best if b[1] >= 0.995][:15]:
        print(f"  {b[0]:.4f} {b[1]:.4f} {b[2]:.4f} {b[3]}")
    print("best with no false pair on the tune split:")
    for b in sorted((b for b in best if b[1] == 1.0), key=lambda b: -b[2])[:5]:
        print(f"  {b[0]:.4f} {b[1]:.4f} {b[2]:.4f} {b[3]}")
    # The defaults as shipped (pair test and groups), on the tune split only: held-out numbers stay unseen.
    from imgsim_fast.jobs.dedup.detect import DEFAULTS

    print(f"\nthe defaults {DEFAULTS} with groups, tune split:")
    for m in METHODS:
        r = evaluate(our_pairs(feats, m), lab, "tune")
        print(f"  {m:10} P={r['precision']:.4f} R={r['recall']:.4f} F1={r['f1']:.4f} ({r['false_pairs']} false)")
        if m == "auto":
            print("    " + " ".join(f"{k}={v:.2f}" for k, v in r["per_kind"].items()))
            print("    false pairs per 1k files: " + " ".join(
                f"{k}={v['false_per_1k_files']:.1f}" for k, v in r["per_lookalike"].items()))
            for fp in r["false_examples"]:
                print("    false:", fp)


def main(argv=None) -> int:
    repo = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    p = argparse.ArgumentParser(prog="python -m imgsim_fast.bench.accuracy", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--tune", action="store_true", help="grid-search the auto thresholds on the tune split")
    p.add_argument("--photos", default=os.path.join(repo, ".cache", "photos"))
    p.add_argument("--json", help="write the full metrics here")
    p.add_argument("--audit", action="store_true",
                   help="on the audit corpus (pictures from packages nothing was tuned on) instead of the halves")
    args = p.parse_args(argv)
    cache = os.path.join(repo, ".cache")
    if args.tune:
        tune(args.photos, cache, args.quick)
        return 0
    from imgsim_fast.bench.report import print_table

    details: dict = {}
    rows = run(args.photos, cache, quick=args.quick, details=details, audit=args.audit)
    print_table(rows)
    _print_details(details)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(details, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
