"""Train on an on-disk WebGraph dataset without loading it: StreamingEngine + held-out rows.

    alsx train DATASET_DIR --out DIR [model flags]

The dataset's train CSR/CSC stay memory-mapped; the engine streams row ranges of
them through the half-step.  Evaluation folds in each held-out row from
``foldin_csr`` and ranks every node for it (its history excluded) against
``truth_csr``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from alsx.config import HParams, Packing
from alsx.data.matrix import CSR
from alsx.errors import DivergenceError
from alsx.webgraph.dataset import MANIFEST, WebGraphDataset, open_dataset

#: Training matrices up to this many entries are also saved as train.npz (so ``ALS.load`` works).
SAVE_TRAIN_MAX_NNZ = 20_000_000


def is_dataset(path: str | os.PathLike) -> bool:
    """True for a directory written by ``alsx webgraph build/synth`` (it has a manifest)."""
    return (Path(path) / MANIFEST).is_file()


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


def evaluate_dataset(ds: WebGraphDataset, h: np.ndarray, hp: HParams, ks: tuple[int, ...] = (20, 50),
                     alpha: float | None = None, max_rows: int | None = None, seed: int = 0,
                     baseline: bool = True) -> dict[str, dict[str, float]]:
    """Recall/NDCG of the held-out rows of ``ds`` for column table ``h`` [n_nodes, d]."""
    from alsx.eval.protocol import evaluate_heldout_csr

    counts = np.diff(np.asarray(ds.train_csc().indptr)) if baseline else None  # in-degree = popularity
    return evaluate_heldout_csr(h, ds.foldin_csr(), ds.truth_csr(), hp, ks, alpha, counts, max_rows, seed)


def evaluate_dataset_sharded(ds: WebGraphDataset, engine, state, hp: HParams, ks: tuple[int, ...] = (20, 50),
                             alpha: float | None = None, max_rows: int | None = None, seed: int = 0,
                             baseline: bool = True) -> dict[str, dict[str, float]]:
    """:func:`evaluate_dataset` for a ShardedEngine across processes, gathering no table (a
    collective): process i of n folds in and ranks every n-th held-out row, fetching only the
    columns its histories read and ranking on the column shards; means merged by row counts."""
    import jax

    from alsx.eval.protocol import evaluate_heldout_csr, merge_across_processes
    from alsx.model import sharded_eval_topk
    from alsx.serve.foldin import fold_in_sharded

    counts = np.diff(np.asarray(ds.train_csc().indptr)) if baseline else None
    local = evaluate_heldout_csr(None, ds.foldin_csr(), ds.truth_csr(), hp, ks, alpha, counts, max_rows, seed,
                                 part=(jax.process_index(), jax.process_count()),
                                 topk=sharded_eval_topk(engine, state),
                                 queries=lambda rows, hist: fold_in_sharded(engine, state, hist, hp))
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
    compute_loss: bool = True,
    fold_in_heldout: bool = True,
    checkpointer: Any = None,
    step_timeout_s: float | None = None,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
) -> dict[str, Any]:
    """Fits tables on dataset ``path`` and evaluates its held-out rows.

    One process: the out-of-core StreamingEngine.  Several processes (``jax.distributed``):
    the sharded engine, each process reading only its contiguous row and column ranges
    of the memory-mapped CSRs; no table is gathered: each process evaluates a share of the
    held-out rows and writes its own rows of the tables, process 0 the rest of ``out``.

    Writes to ``out`` (if given): row_embeddings.npy [n, d] (held-out rows folded in when
    ``fold_in_heldout``), col_embeddings.npy [n, d], config.json, history.json, metrics.json
    and, for graphs up to ``SAVE_TRAIN_MAX_NNZ`` entries, train.npz (``alsx recommend``).

    Returns:
      {"history": [...], "metrics": {...} or None, "seconds_per_epoch": [...], "n_nodes", "nnz", ...}.
    """
    import jax

    from alsx.checkpoint import train as run_epochs
    from alsx.core.streaming import DEFAULT_CHUNK_ENTRIES, StreamingEngine

    ds = open_dataset(path)
    rows, cols = _with_alpha(ds.train_csr(), alpha), _with_alpha(ds.train_csc(), alpha)
    t0 = time.perf_counter()
    multi = jax.process_count() > 1
    if multi:
        from alsx.core.engine import make_engine

        engine = make_engine(rows, cols, hp, packing, tied)
        plan = f"{jax.process_count()} processes, {jax.device_count()} devices"
    else:
        engine = StreamingEngine(rows, cols, hp, packing, tied=tied,
                                 chunk_entries=chunk_entries or DEFAULT_CHUNK_ENTRIES)
        plan = f"{len(engine._layout['rows'].ranges)} + {len(engine._layout['cols'].ranges)} row ranges per epoch"
    lead = jax.process_index() == 0
    if not lead:
        log = lambda s: None  # noqa: E731 - one process reports
    log(f"webgraph: {ds.n_nodes:,} nodes, {rows.nnz:,} train links, {len(ds.heldout_rows):,} held-out rows; {plan}")
    history: list[dict[str, Any]] = []
    clock = [time.perf_counter()]
    eval_s = [0.0]

    def on_epoch(st) -> None:
        seconds = time.perf_counter() - clock[0]
        rec: dict[str, Any] = {"epoch": st.epoch, "seconds": seconds}
        if isinstance(engine, StreamingEngine):  # its host-side packing time, reset per epoch
            rec["pack_seconds"], engine.pack_seconds = engine.pack_seconds, 0.0
        if compute_loss:
            t1 = time.perf_counter()
            loss = engine.loss(st)
            rec["loss"], rec["loss_seconds"] = loss.to_dict(), time.perf_counter() - t1
            if not math.isfinite(loss.total):
                raise DivergenceError(f"training diverged at epoch {st.epoch}: loss is {loss.total}")
        if eval_every and st.epoch % eval_every == 0 and st.epoch != epochs:
            t1 = time.perf_counter()
            if multi:  # a collective: every process takes part
                rec["metrics"] = evaluate_dataset_sharded(ds, engine, st, hp, ks, alpha, max_eval_rows, seed,
                                                          baseline=False)["model"]
            else:
                _, h = engine.to_numpy(st)
                rec["metrics"] = evaluate_dataset(ds, h, hp, ks, alpha, max_eval_rows, seed, baseline=False)["model"]
            eval_s[0] += time.perf_counter() - t1
        history.append(rec)
        log(f"epoch {st.epoch}: {seconds:.1f}s" + (f", loss {rec['loss']['total']:.6g}" if "loss" in rec else ""))
        clock[0] = time.perf_counter()

    def on_resume(found) -> None:  # the history saved with the checkpoint: history.json keeps every epoch
        history[:] = [r for r in found.extra.get("history", []) if r["epoch"] <= found.epoch]
        clock[0] = time.perf_counter()

    st = run_epochs(engine, epochs, seed, checkpointer, step_timeout_s=step_timeout_s, on_epoch=on_epoch,
                    extra=lambda: {"history": history}, on_resume=on_resume)
    train_s = time.perf_counter() - t0
    train_hwm = vm_hwm_bytes()  # peak RSS of training alone (evaluation adds its score batches)
    w = h = None
    if not multi:
        w, h = engine.to_numpy(st)
    metrics = None
    t1 = time.perf_counter()
    if len(ds.heldout_rows) and (multi or lead):
        metrics = (evaluate_dataset_sharded(ds, engine, st, hp, ks, alpha, max_eval_rows, seed) if multi else
                   evaluate_dataset(ds, h, hp, ks, alpha, max_eval_rows, seed))
        if history:
            history[-1]["metrics"] = metrics["model"]
    eval_s[0] += time.perf_counter() - t1
    result = {"dataset": str(path), "n_nodes": ds.n_nodes, "nnz": rows.nnz, "dim": hp.dim, "epochs": st.epoch,
              "history": history, "metrics": metrics, "train_seconds": train_s, "train_vm_hwm": train_hwm, "eval_seconds": eval_s[0],
              "seconds_per_epoch": [r["seconds"] for r in history]}
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
    import jax

    from alsx.distributed import route
    from alsx.eval.protocol import take_rows
    from alsx.serve.foldin import fold_in_sharded

    i, n = jax.process_index(), jax.process_count()
    mine = np.arange(len(ds.heldout_rows))[i::n]
    emb = fold_in_sharded(engine, state, take_rows(ds.foldin_csr(), mine, alpha), hp)
    ids = np.asarray(ds.heldout_rows)[mine].astype(np.int32)
    got = route(np.concatenate([ids[:, None], emb.view(np.int32)], axis=1), np.zeros(len(ids), np.int64))
    return (got[:, 0], np.ascontiguousarray(got[:, 1:]).view(np.float32)) if i == 0 else None


def _write(out: Path, ds: WebGraphDataset, rows: CSR, w, h: np.ndarray | None, hp: HParams,
           result: dict, tied: bool, alpha: float | None, seed: int, packing: Packing,
           fold_in_heldout: bool) -> None:
    """The usual ``alsx train`` outputs, in the layout ``ALS.save`` writes (``h`` None: the
    tables are on disk already and ``w`` holds the folded-in held-out rows, if any)."""
    from alsx.model import FORMAT_VERSION

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
            from alsx.eval.protocol import take_rows
            from alsx.serve.foldin import fold_in

            hist = take_rows(ds.foldin_csr(), np.arange(len(ds.heldout_rows)), alpha)
            w[np.asarray(ds.heldout_rows)] = fold_in(h, hist, hp)
        np.save(out / "row_embeddings.npy", w)
        np.save(out / "col_embeddings.npy", np.asarray(h, np.float32))
    cfg = {"format_version": FORMAT_VERSION, "hparams": dataclasses.asdict(hp), "epochs": result["epochs"],
           "alpha": alpha, "tied": tied, "seed": seed, "packing": dataclasses.asdict(packing),
           "shape": [rows.n_rows, rows.n_cols],
           "data": {"dataset": str(Path(ds.path).resolve()), "engine": "streaming"}}
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    (out / "history.json").write_text(json.dumps(result["history"], indent=2))
    if result["metrics"] is not None:
        (out / "metrics.json").write_text(json.dumps(result["metrics"], indent=2))
    if rows.nnz <= SAVE_TRAIN_MAX_NNZ:  # ALS.load needs it; skipped for huge graphs (it would copy them)
        np.savez(out / "train.npz", indptr=np.asarray(rows.indptr), indices=np.asarray(rows.indices),
                 values=np.ascontiguousarray(rows.values, dtype=np.float32), n_cols=np.int64(rows.n_cols))


def cmd_train_dataset(a: Any) -> int:
    """``alsx train DATASET_DIR``: the argparse namespace of ``alsx train`` -> outputs in ``a.out``."""
    from alsx.cli import _checkpointer, format_table

    hp = HParams(dim=a.dim, reg=a.reg, unobserved_weight=a.unobserved_weight, nu=a.nu, solver=a.solver,
                 cg_steps=a.cg_steps, dtype=a.dtype,
                 **({"block_size": a.block_size} if getattr(a, "block_size", None) else {}))
    chunk = int(float(os.environ.get("ALSX_CHUNK_ENTRIES", "0"))) or None
    max_rows = int(float(os.environ.get("ALSX_MAX_EVAL_ROWS", "0"))) or None
    t = time.perf_counter()
    res = train_webgraph(a.data, a.out, hp, epochs=a.epochs, tied=a.tied, alpha=a.alpha, seed=a.seed,
                         ks=tuple(a.ks), eval_every=a.eval_every, chunk_entries=chunk, max_eval_rows=max_rows,
                         checkpointer=_checkpointer(a), compute_loss=getattr(a, "loss_every", 1) != 0)
    if res["metrics"] is not None:
        print(format_table(res["metrics"], a.ks))
    print(f"trained {res['epochs']} epochs in {time.perf_counter() - t:.1f}s (streaming); wrote {a.out}")
    return 0
