"""Screening heads over frozen sentence embeddings, in pure numpy.

Two kinds, both scored without scikit-learn or torch and stored as ``.npz`` files holding arrays,
the label names and a metadata JSON string (embedder name, version and canary vectors,
training-data hash, date, chosen C, operating points), loaded without pickle so a tampered file
cannot run code.  A ``kind`` entry says which class reads the file; :func:`load_head` dispatches
on it (files written before it existed are linear heads).

* :class:`KernelHead` (what ``chat.screening.train`` writes): one RBF-kernel SVM per label with
  libsvm's Platt scaling, equal to scikit-learn's ``SVC(probability=True).predict_proba`` to
  a few 1e-6.  On the dev split it ranks crisis messages clearly better than a linear model
  (average precision 0.96 against 0.88 on the same embeddings; recall 0.92 against 0.75 at a 10%
  false-positive rate), at the price of a larger file (~2.5 MB of support vectors) and one
  ``[n, dim] x [dim, n_support]`` product per batch (~1 ms for 32 messages on one core).
* :class:`LinearHead`: one logistic regression per label, ``sigmoid(E @ W.T + b)``; kept for
  comparison and for heads trained before the kernel head.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

FORMAT = 1          # the linear head's layout (files without a ``kind`` entry)
KERNEL_FORMAT = 1   # the kernel head's layout
LINEAR, RBF_SVM = "linear", "rbf_svm"
# libsvm clips Platt probabilities to [MIN_PROB, 1 - MIN_PROB]
MIN_PROB = 1e-7

FloatArray = npt.NDArray[np.floating[Any]]


def _check_labels(labels: Sequence[str]) -> tuple[str, ...]:
    if len(set(labels)) != len(labels) or not all(labels):
        raise ValueError(f"labels must be distinct non-empty names: {tuple(labels)!r}")
    return tuple(labels)


def _meta_bytes(metadata: Mapping[str, Any]) -> npt.NDArray[np.uint8]:
    raw = json.dumps(dict(metadata), sort_keys=True, ensure_ascii=False).encode("utf-8")
    return np.frombuffer(raw, dtype=np.uint8)


def _read_npz(path: str | os.PathLike[str], kind: str,
              fmt: int) -> tuple[dict[str, npt.NDArray[Any]], tuple[str, ...], dict[str, Any]]:
    """The arrays of a head file of this ``kind`` and format, its labels and its metadata (no pickle)."""
    with np.load(Path(path), allow_pickle=False) as z:
        found = str(z["kind"]) if "kind" in z.files else LINEAR
        if found != kind:
            raise ValueError(f"{path}: a {found!r} head, not a {kind!r} one (use load_head)")
        if int(z["format"]) != fmt:
            raise ValueError(f"{path}: {kind} head format {int(z['format'])}, this code reads {fmt}")
        arrays = {name: z[name] for name in z.files}
    labels = tuple(str(x) for x in arrays["labels"].tolist())
    meta = json.loads(arrays["metadata"].tobytes().decode("utf-8"))
    return arrays, labels, meta


def _save_npz(path: str | os.PathLike[str], arrays: Mapping[str, npt.NDArray[Any]]) -> None:
    """Write atomically (temp file + rename) so a running reader never sees half a file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".head-", suffix=".npz", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez_compressed(fh, allow_pickle=False, **arrays)
        os.chmod(tmp, 0o644)   # mkstemp makes 0600; the head is a readable package file
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _as_batch(embeddings: FloatArray, dim: int) -> npt.NDArray[np.float32]:
    e = np.asarray(embeddings, dtype=np.float32)
    if e.ndim != 2 or e.shape[1] != dim:
        raise ValueError(f"expected embeddings of shape [n, {dim}], got {e.shape}")
    return e


def _sigmoid(z: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    # sigmoid(z) = exp(-log(1 + exp(-z))), which never overflows
    out: npt.NDArray[np.float32] = np.exp(-np.logaddexp(np.float32(0.0), -z))
    return out.astype(np.float32, copy=False)


class LinearHead:
    """One independent logistic regression per label: ``sigmoid(E @ W.T + b)``."""

    kind = LINEAR

    def __init__(self, weights: FloatArray, bias: FloatArray,
                 labels: Sequence[str], metadata: Mapping[str, Any] | None = None) -> None:
        w = np.asarray(weights, dtype=np.float32)
        b = np.asarray(bias, dtype=np.float32)
        if w.ndim != 2 or b.shape != (w.shape[0],) or len(labels) != w.shape[0]:
            raise ValueError(f"head shapes disagree: weights {w.shape}, bias {b.shape}, {len(labels)} labels")
        if not (np.all(np.isfinite(w)) and np.all(np.isfinite(b))):
            raise ValueError("head weights must be finite")
        self.weights: npt.NDArray[np.float32] = w
        self.bias: npt.NDArray[np.float32] = b
        self.labels: tuple[str, ...] = _check_labels(labels)
        self.metadata: dict[str, Any] = dict(metadata or {})

    @property
    def dim(self) -> int:
        return int(self.weights.shape[1])

    def scores(self, embeddings: FloatArray) -> npt.NDArray[np.float32]:
        """Probabilities, shape [n, n_labels], columns in :attr:`labels` order."""
        e = _as_batch(embeddings, self.dim)
        z: npt.NDArray[np.float32] = e @ self.weights.T + self.bias
        return _sigmoid(z)

    def save(self, path: str | os.PathLike[str]) -> None:
        _save_npz(path, {"format": np.array(FORMAT), "kind": np.array(LINEAR), "weights": self.weights,
                         "bias": self.bias, "labels": np.array(self.labels, dtype=np.str_),
                         "metadata": _meta_bytes(self.metadata)})

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LinearHead:
        z, labels, meta = _read_npz(path, LINEAR, FORMAT)
        return cls(z["weights"], z["bias"], labels, meta)


@dataclass(frozen=True, slots=True)
class BinarySVM:
    """A fitted binary RBF SVM in scikit-learn's terms: ``support_`` (row indices into the
    training matrix), ``dual_coef_[0]``, ``intercept_[0]``, ``_gamma``, ``probA_[0]``, ``probB_[0]``."""

    support: npt.NDArray[np.integer[Any]]
    dual_coef: FloatArray
    intercept: float
    gamma: float
    prob_a: float
    prob_b: float


class KernelHead:
    """One RBF-kernel SVM per label with Platt-scaled probabilities, as libsvm computes them.

    The support vectors of all labels are stored once, as the union of the rows any label uses
    (``support_vectors``, shape [m, dim]); ``dual_coef[l, j]`` is label ``l``'s coefficient of row
    ``j`` (zero when that row is not one of its support vectors).  With scikit-learn's sign
    convention (positive decision = the label applies)::

        f_l(x) = sum_j dual_coef[l, j] * exp(-gamma[l] * ||x - sv_j||^2) + intercept[l]
        p_l(x) = sigmoid(prob_b[l] - prob_a[l] * f_l(x)),  clipped to [1e-7, 1 - 1e-7]

    ``prob_a`` and ``prob_b`` are scikit-learn's ``probA_`` and ``probB_`` unchanged.  libsvm's Platt
    model gives the probability of its *first* class (label absent), ``q = 1 / (1 + exp(A * d + B))``
    with libsvm's decision value ``d = -f``, clipped to ``[1e-7, 1 - 1e-7]``.  scikit-learn's bundled
    libsvm then passes even a binary problem through its pairwise-coupling solver, which stops once
    it is within 0.0025, so ``predict_proba`` can differ from ``1 - q`` by up to about 0.004;
    :func:`_libsvm_binary_coupling` repeats that solver step by step, so the thresholds chosen on
    scikit-learn's dev probabilities mean the same here.
    """

    kind = RBF_SVM

    def __init__(self, support_vectors: FloatArray, dual_coef: FloatArray, intercept: FloatArray,
                 gamma: FloatArray, prob_a: FloatArray, prob_b: FloatArray,
                 labels: Sequence[str], metadata: Mapping[str, Any] | None = None) -> None:
        sv = np.ascontiguousarray(support_vectors, dtype=np.float32)
        coef = np.ascontiguousarray(dual_coef, dtype=np.float32)
        per_label = [np.asarray(a, dtype=np.float32) for a in (intercept, gamma, prob_a, prob_b)]
        n = len(labels)
        if sv.ndim != 2 or coef.shape != (n, sv.shape[0]) or any(a.shape != (n,) for a in per_label):
            raise ValueError(f"head shapes disagree: support vectors {sv.shape}, dual coefficients {coef.shape}, "
                             f"per-label {[a.shape for a in per_label]}, {n} labels")
        if not all(np.all(np.isfinite(a)) for a in (sv, coef, *per_label)):
            raise ValueError("head parameters must be finite")
        if not np.all(per_label[1] > 0):
            raise ValueError("gamma must be positive")
        self.support_vectors: npt.NDArray[np.float32] = sv
        self.dual_coef: npt.NDArray[np.float32] = coef
        self.intercept, self.gamma, self.prob_a, self.prob_b = per_label
        self.labels: tuple[str, ...] = _check_labels(labels)
        self.metadata: dict[str, Any] = dict(metadata or {})
        self._sv_sq: npt.NDArray[np.float64] = np.einsum("ij,ij->i", sv, sv, dtype=np.float64)
        self._coef64: npt.NDArray[np.float64] = coef.astype(np.float64)
        self._one_gamma = bool(np.all(self.gamma == self.gamma[0])) if n else True

    @classmethod
    def from_svms(cls, svms: Sequence[BinarySVM], x_train: FloatArray, labels: Sequence[str],
                  metadata: Mapping[str, Any] | None = None) -> KernelHead:
        """One fitted binary SVM per label (in ``labels`` order) whose support vectors are rows
        of ``x_train``; each training row is stored once however many labels use it."""
        if len(svms) != len(labels):
            raise ValueError(f"{len(svms)} SVMs for {len(labels)} labels")
        x = np.asarray(x_train, dtype=np.float32)
        parts = [np.asarray(s.support, dtype=np.int64).ravel() for s in svms]
        used = np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)
        coef = np.zeros((len(svms), used.size), dtype=np.float64)
        for row, (s, idx) in enumerate(zip(svms, parts, strict=True)):
            coef[row, np.searchsorted(used, idx)] = np.asarray(s.dual_coef, dtype=np.float64).ravel()
        return cls(x[used], coef, np.array([s.intercept for s in svms]), np.array([s.gamma for s in svms]),
                   np.array([s.prob_a for s in svms]), np.array([s.prob_b for s in svms]), labels, metadata)

    @property
    def dim(self) -> int:
        return int(self.support_vectors.shape[1])

    def decision(self, embeddings: FloatArray) -> npt.NDArray[np.float32]:
        """SVM decision values ``f``, shape [n, n_labels] (scikit-learn's ``decision_function``)."""
        return self._decision(_as_batch(embeddings, self.dim)).astype(np.float32)

    def _decision(self, e: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        # ||x - sv||^2 = ||x||^2 + ||sv||^2 - 2 x.sv.  The [n, dim] x [dim, m] product -- nearly all
        # the work -- runs in float32; the [n, m] rest in float64, which keeps the result within
        # ~3e-6 of libsvm's float64 instead of ~1e-5 for hardly any time.
        d2 = (e @ self.support_vectors.T).astype(np.float64)
        d2 *= -2.0
        d2 += np.einsum("ij,ij->i", e, e, dtype=np.float64)[:, None]
        d2 += self._sv_sq[None, :]
        np.maximum(d2, 0.0, out=d2)
        if self._one_gamma:
            d2 *= -float(self.gamma[0])
            np.exp(d2, out=d2)
            f: npt.NDArray[np.float64] = d2 @ self._coef64.T
        else:
            f = np.empty((e.shape[0], len(self.labels)), dtype=np.float64)
            for col in range(len(self.labels)):
                f[:, col] = np.exp(d2 * -float(self.gamma[col])) @ self._coef64[col]
        f += self.intercept.astype(np.float64)
        return f

    def scores(self, embeddings: FloatArray) -> npt.NDArray[np.float32]:
        """Probabilities, shape [n, n_labels], columns in :attr:`labels` order."""
        f = self._decision(_as_batch(embeddings, self.dim))
        # libsvm's sigmoid_predict for its first class, on its decision value -f
        absent = np.exp(-np.logaddexp(0.0, -(self.prob_a.astype(np.float64) * f - self.prob_b)))
        np.clip(absent, MIN_PROB, 1 - MIN_PROB, out=absent)
        return _libsvm_binary_coupling(absent).astype(np.float32)

    def save(self, path: str | os.PathLike[str]) -> None:
        _save_npz(path, {"format": np.array(KERNEL_FORMAT), "kind": np.array(RBF_SVM),
                         "support_vectors": self.support_vectors, "dual_coef": self.dual_coef,
                         "intercept": self.intercept, "gamma": self.gamma, "prob_a": self.prob_a,
                         "prob_b": self.prob_b, "labels": np.array(self.labels, dtype=np.str_),
                         "metadata": _meta_bytes(self.metadata)})

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> KernelHead:
        z, labels, meta = _read_npz(path, RBF_SVM, KERNEL_FORMAT)
        return cls(z["support_vectors"], z["dual_coef"], z["intercept"], z["gamma"], z["prob_a"],
                   z["prob_b"], labels, meta)


def _libsvm_binary_coupling(absent: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Probability of the second class, from libsvm's ``multiclass_probability`` with k = 2 run on
    the pairwise estimate ``r[0][1] = absent``, vectorised element-wise (same updates, order and
    stopping rule: max |Qp - pQp| < 0.005 / k, at most 100 rounds)."""
    r01, r10 = absent, 1.0 - absent
    q00, q11, q01 = r10 * r10, r01 * r01, -r10 * r01
    q_rows = ((q00, q01), (q01, q11))
    p = [np.full_like(absent, 0.5), np.full_like(absent, 0.5)]
    active = np.ones(absent.shape, dtype=bool)
    for _ in range(100):
        qp = [q00 * p[0] + q01 * p[1], q01 * p[0] + q11 * p[1]]
        pqp = p[0] * qp[0] + p[1] * qp[1]
        active &= np.maximum(np.abs(qp[0] - pqp), np.abs(qp[1] - pqp)) >= 0.005 / 2
        if not active.any():
            break
        for t in (0, 1):
            qtt = q_rows[t][t]
            diff = np.where(active, (pqp - qp[t]) / qtt, 0.0)   # 0 leaves converged entries alone
            p[t] = p[t] + diff
            scale = 1.0 + diff
            pqp = (pqp + diff * (diff * qtt + 2.0 * qp[t])) / scale / scale
            qp = [(qp[0] + diff * q_rows[t][0]) / scale, (qp[1] + diff * q_rows[t][1]) / scale]
            p = [p[0] / scale, p[1] / scale]
    return p[1]


Head = LinearHead | KernelHead


def load_head(path: str | os.PathLike[str]) -> Head:
    """Read whichever kind of head ``path`` holds (a file without ``kind`` is a linear head)."""
    with np.load(Path(path), allow_pickle=False) as z:
        kind = str(z["kind"]) if "kind" in z.files else LINEAR
    if kind == LINEAR:
        return LinearHead.load(path)
    if kind == RBF_SVM:
        return KernelHead.load(path)
    raise ValueError(f"{path}: unknown head kind {kind!r}")
