"""Train on an on-disk WebGraph dataset without loading it, and evaluate its held-out rows.

    alsx train DATASET_DIR --out DIR [model flags]

The dataset's train CSR/CSC stay memory-mapped; by default (``--backend auto`` or ``jax``, one
process) the StreamingEngine streams row ranges of them through the half-step; ``--backend cpu``
trains with the CPU kernels, several processes with the sharded engine.  Training is the one
training path, ``alsx.train.run``.  Evaluation folds in each held-out row from
``foldin_csr`` and ranks every node for it (its history excluded) against
``truth_csr``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from alsx.checkpoint import Checkpointer
from alsx.collectives import route
from alsx.config import HParams, Packing
from alsx.core.backends import make_engine
from alsx.data.matrix import CSR
from alsx.eval.protocol import evaluate_heldout_csr, merge_across_processes, take_rows
from alsx.model import FORMAT_VERSION
from alsx.serve.foldin import fold_in, fold_in_sharded
from alsx.train import run, sharded_eval_topk
from alsx.webgraph.dataset import WebGraphDataset, is_dataset, open_dataset  # noqa: F401 - is_dataset, as before

#: Training matrices up to this many entries are also saved as train.npz (so ``ALS.load`` works).
SAVE_TRAIN_MAX_NNZ = 20_000_000


def _with_alpha(csr: CSR, alpha: float | None) -> CSR:
    """Binary dataset -> confidences 1 + alpha (a zero-stride view, nothing allocated)."""
    if alpha is None:
        return csr
    return dataclasses.replace(csr, values=np.broadcast_to(np.float32(1.0 + alpha), (csr.nnz,)))


def vm_hwm_bytes() -> int:
    """Peak resident set size of this process (VmHWM), 0 where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover
        pass
    return 0


def evaluate_dataset(
    ds: WebGraphDataset,
    h: np.ndarray | None,
    hp: HParams,
    ks: tuple[int, ...] = (20, 50),
    alpha: float | None = None,
    max_rows: int | None = None,
    seed: int = 0,
    baseline: bool = True,
    sharded: tuple[Any, Any] | None = None,
) -> dict[str, dict[str, float]]:
    """Recall/NDCG of the held-out rows of ``ds`` for column table ``h`` [n_nodes, d].

    ``sharded`` = (engine, state) of a ShardedEngine across processes (``h`` None), gathering
    no table (a collective): process i of n folds in and ranks every n-th held-out row, fetching
    only the columns its histories read and ranking on the column shards; means merged by row counts."""
    counts = np.diff(np.asarray(ds.train_csc().indptr)) if baseline else None  # in-degree = popularity
    if sharded is None:
        return evaluate_heldout_csr(h, ds.foldin_csr(), ds.truth_csr(), hp, ks, alpha, counts, max_rows, seed)
    engine, state = sharded
    local = evaluate_heldout_csr(
        None,
        ds.foldin_csr(),
        ds.truth_csr(),
        hp,
        ks,
        alpha,
        counts,
        max_rows,
        seed,
        part=(jax.process_index(), jax.process_count()),
        topk=sharded_eval_topk(engine, state),
        queries=lambda rows, hist: fold_in_sharded(engine, state, hist, hp),
    )
    return merge_across_processes(local, ks)


def train_webgraph(
    path: str | os.PathLike,
    out: str | os.PathLike | None,
    hp: HParams,
    *,
    epochs: int,
    tied: bool = False,
    alpha: float | None = None,
    seed: int = 0,
    ks: tuple[int, ...] = (20, 50),
    eval_every: int = 0,
    max_eval_rows: int | None = None,
    packing: Packing = Packing(),
    chunk_entries: int | None = None,
    backend: str = "auto",
    loss_every: int = 1,
    compute_loss: bool = True,
    fold_in_heldout: bool = True,
    checkpointer: Checkpointer | None = None,
    step_timeout_s: float | None = None,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
) -> dict[str, Any]:
    """Fits tables on dataset ``path`` and evaluates its held-out rows.

    One process: the out-of-core StreamingEngine (``backend`` 'auto' or 'jax'; rows streamed in
    ranges of ``chunk_entries`` nonzeros) or the CPU kernels (``backend='cpu'``).  Several
    processes (``jax.distributed``): the sharded engine, each process reading only its contiguous
    row and column ranges of the memory-mapped CSRs; no table is gathered: each process evaluates
    a share of the held-out rows and writes its own rows of the tables, process 0 the rest of ``out``.
    ``loss_every``: training loss every N epochs and after the last (0, or ``compute_loss=False``: never).

    Writes to ``out`` (if given): row_embeddings.npy [n, d] (held-out rows folded in when
    ``fold_in_heldout``), col_embeddings.npy [n, d], config.json, history.json, metrics.json
    and, for graphs up to ``SAVE_TRAIN_MAX_NNZ`` entries, train.npz (``alsx recommend``).

    Returns:
      {"history": [...], "metrics": {...} or None, "seconds_per_epoch": [...], "n_nodes", "nnz", "engine", ...}.
    """
    ds = open_dataset(path)
    rows, cols = _with_alpha(ds.train_csr(), alpha), _with_alpha(ds.train_csc(), alpha)
    t0 = time.perf_counter()
    multi = jax.process_count() > 1
    engine = make_engine(rows, cols, hp, packing, tied, backend=backend, streaming=True, chunk_entries=chunk_entries)
    lead = jax.process_index() == 0
    if not lead:
        log = lambda s: None  # noqa: E731 - one process reports
    log(
        f"webgraph: {ds.n_nodes:,} nodes, {rows.nnz:,} train links, {len(ds.heldout_rows):,} held-out rows; "
        f"{engine.describe()}"
    )

    def metrics(st) -> dict:
        # multi: a collective, every process takes part
        h = None if multi else engine.to_numpy(st)[1]
        sharded = (engine, st) if multi else None
        return evaluate_dataset(ds, h, hp, ks, alpha, max_eval_rows, seed, baseline=False, sharded=sharded)["model"]

    trained = run(
        engine,
        epochs,
        seed,
        evaluator=metrics,
        eval_every=eval_every,
        eval_at_end=False,
        checkpointer=checkpointer,
        step_timeout_s=step_timeout_s,
        loss_every=loss_every if compute_loss else 0,
        progress=False,
        log_line=log,
        counts=lambda: (np.diff(np.asarray(rows.indptr)), np.diff(np.asarray(cols.indptr))),
    )
    st, history = trained.state, trained.history
    train_s = time.perf_counter() - t0
    train_hwm = vm_hwm_bytes()  # peak RSS of training alone (evaluation adds its score batches)
    w = h = None
    if not multi:
        w, h = engine.to_numpy(st)
    metrics_end = None
    t1 = time.perf_counter()
    if len(ds.heldout_rows) and (multi or lead):
        sharded = (engine, st) if multi else None
        metrics_end = evaluate_dataset(ds, h, hp, ks, alpha, max_eval_rows, seed, sharded=sharded)
        if history:
            history[-1]["metrics"] = metrics_end["model"]
    eval_s = trained.eval_seconds + time.perf_counter() - t1
    result = {
        "dataset": str(path),
        "n_nodes": ds.n_nodes,
        "nnz": rows.nnz,
        "dim": hp.dim,
        "epochs": st.epoch,
        "engine": engine.kind,
        "history": history,
        "metrics": metrics_end,
        "train_seconds": train_s,
        "train_vm_hwm": train_hwm,
        "eval_seconds": eval_s,
        "seconds_per_epoch": [r["seconds"] for r in history],
    }
    if out is not None and multi:  # every process writes its own rows, and folds in its share of held-out rows
        engine.write_tables(st, out)
        w = _fold_in_shares(ds, engine, st, hp, alpha) if fold_in_heldout else None
        fold_in_heldout = False
    if out is not None and lead:
        _write(Path(out), ds, rows, w, h, hp, result, tied, alpha, seed, packing, fold_in_heldout)
    return result


def _fold_in_shares(ds: WebGraphDataset, engine, state, hp: HParams, alpha: float | None):
    """Process i folds in every n-th held-out row against the sharded column table; process 0
    gets (row ids, embeddings) of all of them (None elsewhere)."""
    i, n = jax.process_index(), jax.process_count()
    mine = np.arange(len(ds.heldout_rows))[i::n]
    emb = fold_in_sharded(engine, state, take_rows(ds.foldin_csr(), mine, alpha), hp)
    ids = np.asarray(ds.heldout_rows)[mine].astype(np.int32)
    got = route(np.concatenate([ids[:, None], emb.view(np.int32)], axis=1), np.zeros(len(ids), np.int64))
    return (got[:, 0], np.ascontiguousarray(got[:, 1:]).view(np.float32)) if i == 0 else None


def _write(
    out: Path,
    ds: WebGraphDataset,
    rows: CSR,
    w,
    h: np.ndarray | None,
    hp: HParams,
    result: dict,
    tied: bool,
    alpha: float | None,
    seed: int,
    packing: Packing,
    fold_in_heldout: bool,
) -> None:
    """The usual ``alsx train`` outputs, in the layout ``ALS.save`` writes (``h`` None: the
    tables are on disk already and ``w`` holds the folded-in held-out rows, if any)."""
    out.mkdir(parents=True, exist_ok=True)
    if h is None:  # written shard by shard already; w: (held-out rows, folded-in embeddings) or None
        if w is not None:
            mm = np.lib.format.open_memmap(out / "row_embeddings.npy", mode="r+")
            mm[w[0]] = w[1]
            mm.flush()
            del mm
    else:
        w = np.asarray(w, np.float32)
        if fold_in_heldout and len(ds.heldout_rows):
            w = np.array(w, copy=True)  # to_numpy may give a read-only view (and, tied, the column table)
            hist = take_rows(ds.foldin_csr(), np.arange(len(ds.heldout_rows)), alpha)
            w[np.asarray(ds.heldout_rows)] = fold_in(h, hist, hp)
        np.save(out / "row_embeddings.npy", w)
        np.save(out / "col_embeddings.npy", np.asarray(h, np.float32))
    cfg = {
        "format_version": FORMAT_VERSION,
        "hparams": dataclasses.asdict(hp),
        "epochs": result["epochs"],
        "alpha": alpha,
        "tied": tied,
        "seed": seed,
        "packing": dataclasses.asdict(packing),
        "shape": [rows.n_rows, rows.n_cols],
        "data": {"dataset": str(Path(ds.path).resolve()), "engine": result["engine"]},
    }
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    (out / "history.json").write_text(json.dumps(result["history"], indent=2))
    if result["metrics"] is not None:
        (out / "metrics.json").write_text(json.dumps(result["metrics"], indent=2))
    if rows.nnz <= SAVE_TRAIN_MAX_NNZ:  # ALS.load needs it; skipped for huge graphs (it would copy them)
        np.savez(
            out / "train.npz",
            indptr=np.asarray(rows.indptr),
            indices=np.asarray(rows.indices),
            values=np.ascontiguousarray(rows.values, dtype=np.float32),
            n_cols=np.int64(rows.n_cols),
        )
