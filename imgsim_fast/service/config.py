"""What the operator chose when starting `imgsim serve`."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from imgsim_fast.io.loading import DEFAULT_MAX_PIXELS

__all__ = ["ServiceConfig"]


@dataclass
class ServiceConfig:
    catalog: str
    storage: str | None = None          # uploads, by content digest (default <catalog>.uploads/)
    allow_roots: list[str] = field(default_factory=list)  # server-side paths allowed under these (realpath'd)
    allow_anonymous_reads: bool = False
    allow_anonymous_writes: bool = False  # implies anonymous reads
    max_upload_bytes: int = 64 << 20
    max_pixels: int = DEFAULT_MAX_PIXELS
    request_timeout_s: float = 60.0
    embed_model: str | None = "efficientnet-lite0"  # None: hash-only (no embedding, no text search)
    max_batch: int = 32                 # jobs per write transaction, images per embedding forward pass
    threads: int | None = None          # request threads (AnyIO's pool: decoding, catalog reads); None: AnyIO's 40

    def __post_init__(self):
        self.catalog = os.path.abspath(self.catalog)
        self.storage = os.path.abspath(self.storage or self.catalog + ".uploads")
        self.allow_roots = [os.path.realpath(r) for r in self.allow_roots]
        for r in self.allow_roots:
            if not os.path.isdir(r):
                raise ValueError(f"--allow-root {r}: not a folder")
        if self.max_upload_bytes < 1 or self.max_pixels < 1 or self.request_timeout_s <= 0:
            raise ValueError("limits must be positive")
