"""The service's one extraction function: what a file contributes to the catalog and to the duplicate test.

`extract` is the only place the service reads pixels, so switching to the shared extraction of issue 12
(features/extract.py as the one pass) changes this file alone. Today it follows what the catalog indexer does
for one file (catalog/indexer.py `_run_batch`): the content digest, metadata from the header, the catalog's
pHash codes (phash, hash size 8, fast mode: the array `imgsim index` writes and `imgsim search` reads), plus the
eight flips/rotations of that code (hashing.phash_dihedral, variant 0 is bit-identical to the stored code), and
the embedding input prepared as `embed_paths` prepares it. The forward pass is left to the caller, so that
several uploads arriving together share one batch (embedder.BatchEmbedder).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from imgsim_fast.catalog.store import hash_array_name
from imgsim_fast.features import hashing
from imgsim_fast.io.digest import file_digest
from imgsim_fast.features.metadata import Metadata, read_metadata
from imgsim_fast.io.loading import load_image

__all__ = ["HASH_KIND", "HASH_SIZE", "HASH_MODE", "HASH_ARRAY", "DIHEDRAL_ARRAY", "Extracted", "extract"]

HASH_KIND, HASH_SIZE, HASH_MODE = "phash", 8, "fast"
HASH_ARRAY = hash_array_name(HASH_KIND, HASH_SIZE, HASH_MODE)
# The eight variants of the same code, kept for files the service ingests, so the duplicate test's flip rule
# (detect.Thresholds.dihedral) works between stored files too. Files indexed by `imgsim index` lack it; their
# variants are taken as their identity code (no flip evidence, never a wrong one).
DIHEDRAL_ARRAY = HASH_ARRAY + ".dihedral"


@dataclass
class Extracted:
    """One file's features. `embed_input` is the model's prepared (s, s, 3) uint8 input, or None."""

    digest: str
    metadata: Metadata
    codes8: np.ndarray              # (8, words) uint64: the pHash of the picture and of its 7 flips/rotations
    embed_input: np.ndarray | None
    st: os.stat_result

    @property
    def code(self) -> np.ndarray:
        return self.codes8[0]


def extract(path: str, *, max_pixels: int | None, embed_spec=None) -> Extracted:
    """Features of the image file `path`. Raises ImageLoadError (its `kind` says why) for a file that is not an
    image, is over `max_pixels` by its header (checked before any pixel is decoded), or does not decode."""
    st = os.stat(path)
    digest = file_digest(path)
    img = load_image(path, min_size=hashing.draft_size((HASH_KIND,), HASH_MODE, HASH_SIZE), max_pixels=max_pixels)
    pixels = hashing.prepare_fast(img, HASH_KIND, HASH_SIZE)
    codes8 = hashing.phash_dihedral(pixels[None])[0]
    embed_input = None
    if embed_spec is not None:
        from imgsim_fast.features.embedding.preprocess import prepare_image

        m = embed_spec.min_decode_size
        # A second decode at the embedding's size, as `imgsim index --embed` does: the hash keeps the draft
        # size `imgsim index` hashes at, so a code computed here equals the one indexing the file would store.
        big = load_image(path, min_size=(m, m), max_pixels=max_pixels)
        embed_input = prepare_image(big, embed_spec)
    md = read_metadata(path, sidecars=[])  # uploads have no sidecars; the header's facts and EXIF/XMP
    return Extracted(digest, md, codes8, embed_input, st)
