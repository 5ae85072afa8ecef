"""The service's one extraction function: what a file contributes to the catalog and to the duplicate test.

`extract` runs the shared extraction pass (features/extract.py) on one file: one read, then the content
digest, metadata from the same bytes, one decode feeding the catalog's pHash codes (phash, hash size 8, fast
mode: the array `imgsim index` writes and `imgsim search` reads), the eight flips/rotations of that code
(variant 0 is bit-identical to the stored code), the embedding input prepared as the indexer prepares it,
and dedup's features as `imgsim dedup` extracts them (the border-trimmed dihedral pHash, the thumbnail of
the pixel check, keep-best's facts, the two views it embeds): the duplicate test is dedup's own.
The forward passes are left to the caller, so that several uploads arriving together share one batch
(embedder.BatchEmbedder).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from imgsim_fast.catalog.dedup_features import PHASH8, feature_rows
from imgsim_fast.catalog.store import hash_array_name
from imgsim_fast.features.extract import ExtractSpec, extract_file
from imgsim_fast.features.metadata import Metadata
from imgsim_fast.io.loading import ImageLoadError

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
    dedup: tuple                    # extract_file's (FileFacts, (hash pixels, thumbnail), views or None)
    dedup_vectors: np.ndarray | None = None  # (2, dim): the views embedded (the caller's forward pass)

    @cached_property
    def dedup_rows(self) -> dict[str, np.ndarray]:
        """The file's rows of dedup's catalog arrays (catalog/dedup_features.feature_rows), made once."""
        return feature_rows([self.dedup])

    @property
    def dedup_codes8(self) -> np.ndarray:
        """(8, 1) uint64: the border-trimmed pHash and its flips, as catalog/dedup_features.PHASH8 keeps it."""
        return self.dedup_rows[PHASH8].reshape(8, 1)

    @property
    def thumb(self) -> np.ndarray:
        return self.dedup[1][1]

    @property
    def code(self) -> np.ndarray:
        return self.codes8[0]


def extract(path: str, *, max_pixels: int | None, embed_spec=None) -> Extracted:
    """Features of the image file `path`. Raises ImageLoadError (its `kind` says why) for a file that is not an
    image, is over `max_pixels` by its header (checked before any pixel is decoded), or does not decode.
    embed_spec: the model's input spec; dedup's views are prepared at its size too."""
    spec = ExtractSpec(kinds=(HASH_KIND,), mode=HASH_MODE, hash_size=HASH_SIZE, embed=embed_spec, metadata=True,
                       dihedral=True, max_pixels=max_pixels, dedup=True,
                       dedup_embed_size=embed_spec.size if embed_spec is not None else None)
    st = os.stat(path)
    r = extract_file(path, spec)  # uploads have no sidecars: the header's facts and EXIF/XMP
    if r.failure is not None:
        raise ImageLoadError(path, r.failure.reason, r.failure.kind)
    return Extracted(r.digest, r.metadata, r.codes8, r.embed_input, st, r.dedup)
