"""StreamingEngine equals LocalEngine (several row ranges, long rows, both solvers, tied)."""

from __future__ import annotations

import numpy as np
import pytest

from alsx.config import HParams, Packing
from alsx.core.engine import LocalEngine
from alsx.core.streaming import StreamingEngine, pack_range, row_ranges, side_layout
from alsx.data.matrix import CSR, coo_to_csr

# Tiny widths so a small graph has several buckets and long rows (> max_width).
NARROW = Packing(n_buckets=3, max_width=8, batch_entries=32)


def graph(n: int = 60, seed: int = 0) -> tuple[CSR, CSR]:
    """Square power-law-ish graph [n, n] with a few hub rows/columns and empty rows."""
    rng = np.random.default_rng(seed)
    deg = np.minimum(rng.zipf(1.8, n), n - 1)
    deg[:3] = [40, 25, 0]  # hubs longer than max_width, and an empty row
    deg[10] = 0
    r = np.repeat(np.arange(n), deg)
    c = np.concatenate([rng.choice(n, k, replace=False) for k in deg])
    c[r == 5] = 7  # a popular column too
    pairs = np.unique(np.stack([r, c], 1), axis=0)
    r, c = pairs[:, 0], pairs[:, 1]
    v = (1.0 + rng.random(len(r))).astype(np.float32)
    return coo_to_csr(r, c, v, n, n), coo_to_csr(c, r, v, n, n)


def run(engine, epochs: int = 2):
    st = engine.init_state(3)
    for _ in range(epochs):
        st = engine.epoch(st)
    return st, engine.to_numpy(st), engine.loss(st)


def test_layout_has_several_ranges_and_long_rows():
    rows, _ = graph()
    lay = side_layout(rows, 4, NARROW, False, chunk_entries=50)
    assert len(lay.ranges) >= 4
    assert lay.ranges[0][0] == 0 and lay.ranges[-1][1] == rows.n_rows
    k = np.full(len(lay.widths), 2)
    packed = [pack_range(rows, r0, r1, lay, NARROW, k) for r0, r1 in lay.ranges]
    assert sum(p.nnz for p in packed) == rows.nnz
    assert any(p.longs for p in packed)
    # every non-empty row lands in exactly one slot
    ids = np.concatenate([b[2].ravel() for p in packed for b in p.blocks] + [lg[3] for p in packed for lg in p.longs])
    ids = ids[ids < rows.n_rows]
    assert np.array_equal(np.sort(ids), np.flatnonzero(np.diff(rows.indptr)))


def test_row_ranges_cover_and_isolate_long_rows():
    indptr = np.array([0, 5, 5, 105, 106, 110])
    assert row_ranges(indptr, 10) == [(0, 2), (2, 3), (3, 5)]


@pytest.mark.parametrize("solver", ["cholesky", "cg"])
@pytest.mark.parametrize("tied", [False, True])
def test_streaming_equals_local(solver, tied):
    rows, cols = graph()
    hp = HParams(dim=4, reg=0.05, unobserved_weight=0.1, nu=1.0, solver=solver, cg_steps=3)
    ref_st, (rw, rh), ref_loss = run(LocalEngine(rows, cols, hp, NARROW, tied=tied))
    eng = StreamingEngine(rows, cols, hp, NARROW, tied=tied, chunk_entries=60, call_entries=64)
    assert len(eng._layout["rows"].ranges) >= 3
    st, (w, h), loss = run(eng)
    scale = max(np.abs(rw).max(), np.abs(rh).max())
    assert np.abs(w - rw).max() / scale < 1e-5
    assert np.abs(h - rh).max() / scale < 1e-5
    assert loss.total == pytest.approx(ref_loss.total, rel=1e-5)
    assert loss.observed == pytest.approx(ref_loss.observed, rel=1e-5)
    assert np.all(w[2] == 0.0) or tied  # empty row -> exact 0 (untied)


def test_one_range_cache_and_no_prefetch_agree():
    rows, cols = graph(seed=1)
    hp = HParams(dim=4, reg=0.05, unobserved_weight=0.1, solver="cg", cg_steps=2)
    _, (a, b), _ = run(StreamingEngine(rows, cols, hp, NARROW, chunk_entries=1 << 20), 1)
    _, (c, d), _ = run(StreamingEngine(rows, cols, hp, NARROW, chunk_entries=40, prefetch=False), 1)
    np.testing.assert_allclose(a, c, rtol=0, atol=1e-6)
    np.testing.assert_allclose(b, d, rtol=0, atol=1e-6)


@pytest.mark.parametrize("tied", [False, True])
def test_alsx_train_on_dataset_dir(tmp_path, tied):
    import json

    from alsx.cli import main
    from alsx.model import ALS
    from alsx.webgraph.synthetic import synth_webgraph

    ds = synth_webgraph(tmp_path / "wg", 400, 4000, seed=1, heldout_fraction=0.2)
    assert len(ds.heldout_rows) > 0
    out = tmp_path / "model"
    assert main(["train", str(ds.path), "--out", str(out), "--dim", "8", "--epochs", "2"] + ["--tied"] * tied) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["model"]["recall@20"] <= 1.0 and metrics["model"]["n_eval_rows"] > 0
    assert metrics["model"]["recall@50"] >= metrics["model"]["recall@20"]
    hist = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in hist] == [1, 2]
    model = ALS.load(out)  # same layout as ALS.save
    assert model.row_embeddings_.shape == (400, 8)
    assert np.all(np.isfinite(model.row_embeddings_))
