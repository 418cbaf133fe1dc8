"""The scorer: canonical text -> sentence embedding -> one probability per label.

The text is canonicalised exactly as the phrase rules see it (:func:`chat.textnorm.canonicalize`),
so invisible characters and look-alike letters change neither verdict.  Loading checks that the
installed embedder still makes the vectors the head was trained on (the head's canary), so a
silently changed dependency stops start-up instead of scoring garbage.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from chat.screening.embedder import SentenceEmbedder
from chat.screening.head import Head, load_head
from chat.textnorm import canonicalize, visual_order

MAX_CHARS = 2000      # the encoder reads the start of a message; 4,000-character messages cost no more


def packaged_head() -> Path:
    return Path(str(resources.files("chat.screening") / "model" / "head.npz"))


class Scorer:
    def __init__(self, embedder: SentenceEmbedder, head: Head) -> None:
        embedder.check_head_metadata(head.metadata)
        self.embedder = embedder
        self.head = head
        self.labels = head.labels

    @classmethod
    def load(cls, head_path: str | os.PathLike[str] | None = None, *, batch_size: int = 32) -> Scorer:
        """Raises RuntimeError naming what failed, for ``serve`` and ``moderate`` to print and stop on."""
        path = Path(head_path) if head_path else packaged_head()
        try:
            head = load_head(path)   # whichever kind train.py wrote (a kernel SVM head today)
        except Exception as exc:
            raise RuntimeError(f"screening model failed to load: {path}: {type(exc).__name__}: {exc}") from exc
        return cls(SentenceEmbedder(batch_size=batch_size), head)

    @property
    def operating_points(self) -> dict[str, Any]:
        """Thresholds chosen on the dev split when the head was trained (the defaults of the settings)."""
        return dict(self.head.metadata.get("operating_points", {}))

    def score(self, texts: Sequence[str]) -> list[dict[str, float]]:
        """One ``{label: probability}`` per text.  A text written with a right-to-left override is
        also scored as a reader sees it, and each label keeps the higher of the two scores."""
        forms = [[t] + ([v] if (v := visual_order(t)) is not None else []) for t in texts]
        flat = [canonicalize(f).text[:MAX_CHARS] or " " for group in forms for f in group]
        embeddings = self.embedder.embed(flat)
        with self.embedder.blas_threads():   # the kernel head's product, on the embedder's thread budget
            probs = self.head.scores(embeddings)
        out, row = [], 0
        for group in forms:
            best = probs[row:row + len(group)].max(axis=0)
            row += len(group)
            out.append({label: float(p) for label, p in zip(self.labels, best, strict=True)})
        return out
