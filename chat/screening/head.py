"""A multi-label logistic-regression head over frozen sentence embeddings, in pure numpy.

Why pure numpy: scoring is one small matrix product and a sigmoid, so the runtime needs neither
scikit-learn nor torch.  The trained head is a few kilobytes of ``.npz`` holding the weights, the
label names and a metadata JSON string (embedder name, version and canary vectors, training-data
hash, date, chosen C), loaded without pickle so a tampered file cannot run code.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

FORMAT = 1


class LinearHead:
    """One independent logistic regression per label: ``sigmoid(E @ W.T + b)``."""

    def __init__(self, weights: npt.NDArray[np.floating[Any]], bias: npt.NDArray[np.floating[Any]],
                 labels: tuple[str, ...], metadata: Mapping[str, Any] | None = None) -> None:
        w = np.asarray(weights, dtype=np.float32)
        b = np.asarray(bias, dtype=np.float32)
        if w.ndim != 2 or b.shape != (w.shape[0],) or len(labels) != w.shape[0]:
            raise ValueError(f"head shapes disagree: weights {w.shape}, bias {b.shape}, {len(labels)} labels")
        if len(set(labels)) != len(labels) or not all(labels):
            raise ValueError(f"labels must be distinct non-empty names: {labels!r}")
        if not (np.all(np.isfinite(w)) and np.all(np.isfinite(b))):
            raise ValueError("head weights must be finite")
        self.weights: npt.NDArray[np.float32] = w
        self.bias: npt.NDArray[np.float32] = b
        self.labels: tuple[str, ...] = tuple(labels)
        self.metadata: dict[str, Any] = dict(metadata or {})

    @property
    def dim(self) -> int:
        return int(self.weights.shape[1])

    def scores(self, embeddings: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float32]:
        """Probabilities, shape [n, n_labels], columns in :attr:`labels` order."""
        e = np.asarray(embeddings, dtype=np.float32)
        if e.ndim != 2 or e.shape[1] != self.dim:
            raise ValueError(f"expected embeddings of shape [n, {self.dim}], got {e.shape}")
        z: npt.NDArray[np.float32] = e @ self.weights.T + self.bias
        # sigmoid(z) = exp(-log(1 + exp(-z))), which never overflows
        out: npt.NDArray[np.float32] = np.exp(-np.logaddexp(np.float32(0.0), -z))
        return out.astype(np.float32, copy=False)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically (temp file + rename) so a running reader never sees half a file."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".head-", suffix=".npz", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                meta = json.dumps(self.metadata, sort_keys=True, ensure_ascii=False).encode("utf-8")
                np.savez_compressed(fh, format=np.array(FORMAT), weights=self.weights, bias=self.bias,
                                    labels=np.array(self.labels, dtype=np.str_),
                                    metadata=np.frombuffer(meta, dtype=np.uint8))
            os.chmod(tmp, 0o644)   # mkstemp makes 0600; the head is a readable package file
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LinearHead:
        with np.load(Path(path), allow_pickle=False) as z:
            fmt = int(z["format"])
            if fmt != FORMAT:
                raise ValueError(f"{path}: head format {fmt}, this code reads {FORMAT}")
            labels = tuple(str(x) for x in z["labels"].tolist())
            meta = json.loads(z["metadata"].tobytes().decode("utf-8"))
            return cls(z["weights"], z["bias"], labels, meta)
