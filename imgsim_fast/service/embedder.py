"""One forward pass for the embedding inputs of requests that arrive together.

Request threads hand over their prepared inputs and wait; one thread runs the model on everything queued at
that moment (up to `max_batch`), so eight concurrent uploads cost one batch of eight, not eight batches of
one. The model is used from this thread only.
"""
from __future__ import annotations

import queue
import threading
from concurrent.futures import Future

import numpy as np

__all__ = ["BatchEmbedder"]


class BatchEmbedder:
    def __init__(self, model, max_batch: int = 32, on_batch=None):
        self.model = model
        self.max_batch = max_batch
        self.on_batch = on_batch or (lambda n: None)
        self._q: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="imgsim-embedder", daemon=True)
        self._thread.start()

    @property
    def dim(self) -> int:
        return self.model.dim

    @property
    def has_text(self) -> bool:
        return bool(getattr(self.model, "has_text", False))

    def embed(self, inputs: list[np.ndarray]) -> np.ndarray:
        """(n, dim) float32 unit vectors for prepared (s, s, 3) uint8 inputs."""
        if not inputs:
            return np.zeros((0, self.dim), np.float32)
        fut: Future = Future()
        self._q.put((np.stack(inputs), fut))
        return fut.result()

    def embed_text(self, text: str) -> np.ndarray:
        fut: Future = Future()
        self._q.put((text, fut))
        return fut.result()

    def _run(self) -> None:
        import torch

        while True:
            jobs = [self._q.get()]
            n = len(jobs[0][0]) if not isinstance(jobs[0][0], str) else 0
            while n < self.max_batch:
                try:
                    j = self._q.get_nowait()
                except queue.Empty:
                    break
                jobs.append(j)
                n += 0 if isinstance(j[0], str) else len(j[0])
            images = [(x, f) for x, f in jobs if not isinstance(x, str)]
            for text, fut in ((x, f) for x, f in jobs if isinstance(x, str)):
                try:
                    fut.set_result(np.asarray(self.model.embed_text([text]), np.float32)[0])
                except Exception as e:
                    fut.set_exception(e)
            if not images:
                continue
            try:
                batch = np.concatenate([x for x, _ in images])
                out = self.model.embed_pixels(torch.from_numpy(batch)).cpu().numpy().astype(np.float32)
                self.on_batch(len(batch))
            except Exception as e:
                for _, fut in images:
                    fut.set_exception(e)
                continue
            s = 0
            for x, fut in images:
                fut.set_result(out[s:s + len(x)])
                s += len(x)
