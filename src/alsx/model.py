"""The ALS estimator: hyper-parameters in the constructor, ``fit`` learns.

>>> model = ALS(dim=64, epochs=10).fit(interactions)          # doctest: +SKIP
>>> ids, scores = model.recommend([0, 1], k=10)                # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tqdm.auto import tqdm

from alsx.callbacks import StopTraining
from alsx.config import HParams, Packing
from alsx.data.matrix import CSR, Interactions
from alsx.data.split import Split
from alsx.errors import DivergenceError

FORMAT_VERSION = 1


def as_interactions(x: Any) -> Interactions:
    """Accepts Interactions, scipy.sparse matrices and pandas DataFrames (via ingest)."""
    if isinstance(x, Interactions):
        return x
    from alsx.data.ingest import load_interactions

    data, _ = load_interactions(x)
    return data


def sharded_eval_topk(engine, state):
    """For a ShardedEngine: the evaluation scorer that ranks against its column shards in
    place (``alsx.eval.protocol.sharded_scorer``); None for one-device engines."""
    from alsx.core.sharded import ShardedEngine

    if not isinstance(engine, ShardedEngine):
        return None
    from alsx.eval.protocol import sharded_scorer
    from alsx.serve.sharded_topk import ShardedTable

    return sharded_scorer(ShardedTable.from_engine(engine, state))


def _check_finite(table: np.ndarray, name: str, epoch: int, counts: np.ndarray, hp: HParams) -> None:
    """Raises DivergenceError naming how much of ``table`` [n, d] is non-finite and where it starts.

    counts: [n] stored entries per row of that side (the first bad row's count hints at the cause).
    A remedy is named only where one is measured: with reg = 0 and unobserved_weight = 0 a row
    with fewer than d entries has a singular system (tests/test_cli.py diverges there at epoch 1
    and trains with any reg > 0).  Otherwise none is known (the one cause seen at real settings,
    CG in float32 subnormals, is fixed at its root: ``alsx.core.solvers.RESIDUAL_FLOOR``).
    """
    bad = ~np.isfinite(table)
    if not bad.any():
        return
    rows = np.flatnonzero(bad.any(axis=1))
    first = int(rows[0])
    raise DivergenceError(
        f"training diverged at epoch {epoch}: {int(bad.sum()):,} non-finite values in {len(rows):,} of "
        f"{len(table):,} rows of the {name} table (first: row {first}, which has {int(counts[first]):,} stored "
        f"entries); the tables after epoch {epoch - 1} were finite. "
        + ("With --reg 0 and --unobserved-weight 0 a row with fewer than --dim entries has no unique "
           "solution: give --reg > 0" if hp.reg == 0 and hp.unobserved_weight == 0 else
           "This is not expected: please report it with the command and the output of --debug"))


class ALS:
    """Implicit alternating least squares (iALS, Hu et al. 2008; Rendle et al. 2021).

    Args:
      dim: embedding dimension.
      reg: lambda; each row is regularised by reg * (|I_u| + unobserved_weight * n_cols) ** nu.
      unobserved_weight: alpha0, weight of the push of all pairs towards 0.
      nu: frequency-scaling exponent of the regulariser (0: plain, 1: Rendle et al.).
      solver: 'cg', 'cholesky' or 'block' (iALS++).
      cg_steps: CG iterations per half-epoch.
      block_size: subspace size of the 'block' (iALS++) solver; 0: 1 on the CPU backend, the
        largest divisor of dim up to 64 with JAX.
      epochs: full epochs (rows, then columns).
      dtype: table storage, 'float32' or 'bfloat16' (normal equations stay float32).
      alpha: if set, confidences are 1 + alpha * value (Hu et al.); else every entry weighs 1.
      tied: one table for rows and columns (square graphs).
      init_scale: tables start as N(0, init_scale / sqrt(dim)) (or U[0, 2 init_scale / sqrt(dim))).
      init: 'normal' or 'uniform' (all-positive entries, the start implicit uses).
      seed: seeds the initial tables.
      packing: block layout of the sparse rows.
      backend: 'auto', 'cpu' or 'jax' (see ``alsx.core.engine.make_engine``): 'auto' trains
        with the fused CPU kernels on a CPU-only host (CG or block, float32, one process) and with
        JAX (one device or sharded over all) otherwise.
      engine_factory: builds the training engine instead of ``make_engine`` (tests, custom meshes).
      progress: show a progress bar.
      loss_every: compute the training loss every N epochs and after the last (0: never).
        The loss costs about a third of a CG epoch at small d; epochs without it still
        stop on non-finite tables.
    """

    def __init__(
        self,
        dim: int = 128,
        reg: float = 0.003,
        unobserved_weight: float = 0.03,
        nu: float = 1.0,
        solver: str = "cg",
        cg_steps: int = 3,
        block_size: int = 0,
        epochs: int = 16,
        dtype: str = "float32",
        alpha: float | None = None,
        tied: bool = False,
        init_scale: float = 0.1,
        init: str = "normal",
        seed: int = 0,
        packing: Packing = Packing(),
        engine_factory: Callable | None = None,
        progress: bool = True,
        loss_every: int = 1,
        backend: str = "auto",
    ):
        self.hparams = HParams(dim=dim, reg=reg, unobserved_weight=unobserved_weight, nu=nu, solver=solver,
                               cg_steps=cg_steps, block_size=block_size, dtype=dtype, init_scale=init_scale,
                               init=init)
        if epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {epochs}")
        if loss_every < 0:
            raise ValueError(f"loss_every must be >= 0, got {loss_every}")
        from alsx.core.engine import BACKENDS

        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.backend = backend
        self.loss_every = loss_every
        self.epochs = epochs
        self.alpha = alpha
        self.tied = tied
        self.seed = seed
        self.packing = packing
        self.engine_factory = engine_factory
        self.progress = progress
        self.row_embeddings_: np.ndarray | None = None
        self.col_embeddings_: np.ndarray | None = None
        self.history_: list[dict] = []
        self.train_: CSR | None = None
        self.row_vocab_ = None
        self.col_vocab_ = None
        self.eval_topk_ = None  # after fit on a ShardedEngine: scores against its column shards

    # ------------------------------------------------------------------ training
    def _engine(self, train: Interactions):
        from alsx.core.engine import make_engine

        rows, cols = train.csr(self.alpha), train.csc(self.alpha)
        if self.engine_factory is not None:
            return self.engine_factory(rows, cols, self.hparams, self.packing, self.tied), rows
        return make_engine(rows, cols, self.hparams, self.packing, self.tied, backend=self.backend), rows

    def fit(
        self,
        x: Any,
        *,
        split: Split | None = None,
        eval_every: int = 0,
        eval_ks: tuple[int, ...] = (20, 50),
        callback: Callable[[dict, Any], None] | None = None,
        checkpointer: Any = None,
        step_timeout_s: float | None = None,
        gather_tables: bool = True,
    ) -> "ALS":
        """Learns both tables.

        Args:
          x: training interactions (Interactions, scipy.sparse or DataFrame); with
            ``split``, pass ``split.train``.
          split: enables evaluation every ``eval_every`` epochs (and after the last).
          callback: called after each epoch with (history record, engine state).
          checkpointer: an ``alsx.checkpoint.Checkpointer``: resume from its newest good
            checkpoint and save on its schedule.  Each step stores the history up to it, so
            ``history_`` of a resumed fit holds every epoch, the ones before the resume too.
          step_timeout_s: stop with an error when one epoch takes longer (hung peer).
          gather_tables: copy the final tables to this host (``row_embeddings_``,
            ``col_embeddings_``); False keeps them on the devices only (``state_`` and
            ``engine_``), for tables larger than one host.
        """
        from alsx.checkpoint import train as run_epochs
        from alsx.eval.protocol import evaluate

        train = as_interactions(x)
        engine, rows_csr = self._engine(train)
        self.train_ = rows_csr
        self.row_vocab_, self.col_vocab_ = train.row_vocab, train.col_vocab
        self.shape_ = train.shape
        self.engine_name_ = type(engine).__name__
        self.pack_stats_ = getattr(engine, "stats", None)
        self.history_ = []
        bar = tqdm(total=self.epochs, desc="alsx", unit="epoch", disable=not self.progress)
        clock = [time.perf_counter()]

        def on_epoch(st) -> None:
            seconds = time.perf_counter() - clock[0]
            t1 = time.perf_counter()
            record: dict[str, Any] = {"epoch": st.epoch, "seconds": seconds}
            every = self.loss_every
            if every and (st.epoch % every == 0 or st.epoch == self.epochs):
                loss = engine.loss(st)
                record.update(loss=loss.to_dict(), loss_seconds=time.perf_counter() - t1)
                finite = math.isfinite(loss.total)
            else:  # one pass over the tables instead of the loss
                import jax.numpy as jnp

                finite = bool(jnp.isfinite(st.w).all() & jnp.isfinite(st.h).all())
                record["check_seconds"] = time.perf_counter() - t1
            if not finite:
                w, h = engine.to_numpy(st)
                _check_finite(w, "row", st.epoch, rows_csr.lengths(), self.hparams)
                _check_finite(h, "column", st.epoch,
                              np.bincount(rows_csr.indices, minlength=rows_csr.n_cols), self.hparams)
                raise DivergenceError(f"training diverged at epoch {st.epoch}: loss is "
                                      f"{record.get('loss', {}).get('total', 'not finite')}")
            if split is not None and eval_every and (st.epoch % eval_every == 0 or st.epoch == self.epochs):
                w, h = engine.to_numpy(st)
                record["metrics"] = evaluate(w, h, split, self.hparams, eval_ks, self.alpha, baseline=False,
                                             topk=sharded_eval_topk(engine, st))["model"]
            self.history_.append(record)
            bar.n = st.epoch
            if "loss" in record:
                bar.set_postfix(loss=f"{record['loss']['total']:.5g}", s=f"{seconds:.2f}")
            else:
                bar.set_postfix(s=f"{seconds:.2f}")
            if callback is not None:
                callback(record, st)
            clock[0] = time.perf_counter()

        def on_resume(found) -> None:
            if "history" not in found.extra and self.progress:
                tqdm.write(f"alsx: warning: the checkpoint of epoch {found.epoch} holds no history (saved by an "
                           f"older alsx): history.json starts at epoch {found.epoch + 1}", file=sys.stderr)
            self.history_ = [r for r in found.extra.get("history", []) if r["epoch"] <= found.epoch]
            bar.n = found.epoch
            bar.refresh()
            clock[0] = time.perf_counter()  # the first resumed epoch's seconds exclude the restore

        # --- StopTraining (minimal handling for early stopping; the engine helper owns the final one)
        self.engine_, last, stopped = engine, [None], None  # callbacks may read engine_ (to_numpy)
        user_callback = callback
        if user_callback is not None:
            def callback(record: dict, st) -> None:
                last[0] = st
                user_callback(record, st)
        try:
            st = run_epochs(engine, self.epochs, self.seed, checkpointer, step_timeout_s=step_timeout_s,
                            on_epoch=on_epoch, extra=lambda: {"history": self.history_}, on_resume=on_resume)
        except StopTraining as e:  # ends after that epoch; the model keeps its tables, or the ones e carries
            st, stopped = last[0], e
            self.history_[-1]["stopped"] = {"reason": e.reason, "kept_epoch": e.epoch if e.tables else st.epoch}
        finally:
            bar.close()
        # --- end StopTraining
        self.state_, self.engine_ = st, engine
        release = getattr(engine, "release_scratch", None)  # epoch buffers, not needed any more
        if release is not None:
            release()
        if gather_tables:
            self.row_embeddings_, self.col_embeddings_ = engine.to_numpy(st)
            if stopped is not None and stopped.tables is not None:
                self.row_embeddings_, self.col_embeddings_ = (np.asarray(t, np.float32) for t in stopped.tables)
        self.eval_topk_ = sharded_eval_topk(engine, st)
        return self

    # ------------------------------------------------------------------ serving
    def _require_fit(self) -> None:
        if self.row_embeddings_ is None:
            raise RuntimeError("the model is not fitted: call fit() or ALS.load() first")

    def recommend(self, rows: Any, k: int = 10, exclude_seen: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Top-k columns for each of ``rows`` (dense indices), seen columns excluded.

        Returns:
          ids: int32 [n, k] column indices (-1 where fewer than k remain); scores: float32 [n, k].
        """
        from alsx.serve.topk import topk_scores

        self._require_fit()
        rows = np.atleast_1d(np.asarray(rows, dtype=np.int64))
        if rows.size and (rows.min() < 0 or rows.max() >= self.row_embeddings_.shape[0]):
            raise IndexError(f"row index out of range [0, {self.row_embeddings_.shape[0]}): {rows}")
        exclude = self.train_ if exclude_seen else None
        scores, ids = topk_scores(self.row_embeddings_[rows], self.col_embeddings_, k, exclude=exclude,
                                  exclude_ids=rows if exclude is not None else None)
        return ids, scores

    def similar_items(self, items: Any, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """The k most cosine-similar columns to each of ``items`` (itself excluded)."""
        from alsx.serve.topk import similar

        self._require_fit()
        scores, ids = similar(self.col_embeddings_, np.atleast_1d(np.asarray(items)), k)
        return ids, scores

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict:
        return {"format_version": FORMAT_VERSION, "hparams": dataclasses.asdict(self.hparams),
                "epochs": self.epochs, "alpha": self.alpha, "tied": self.tied, "seed": self.seed,
                "packing": dataclasses.asdict(self.packing),
                "shape": list(getattr(self, "shape_", (0, 0)))}

    def save(self, path: str | Path, tables: bool = True) -> Path:
        """Writes npy tables, json config/history, npz vocabularies and training rows (never pickle).

        ``tables=False``: everything but the tables (written elsewhere, e.g. shard by shard
        by every process of a multi-process run: ``ShardedEngine.write_tables``).
        """
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        if tables:
            self._require_fit()
            np.save(out / "row_embeddings.npy", self.row_embeddings_.astype(np.float32))
            np.save(out / "col_embeddings.npy", self.col_embeddings_.astype(np.float32))
        (out / "config.json").write_text(json.dumps(self.config(), indent=2))
        (out / "history.json").write_text(json.dumps(self.history_, indent=2))
        np.savez(out / "train.npz", indptr=self.train_.indptr, indices=self.train_.indices,
                 values=self.train_.values, n_cols=np.int64(self.train_.n_cols))
        for name, vocab in (("row_vocab.npz", self.row_vocab_), ("col_vocab.npz", self.col_vocab_)):
            if vocab is not None:
                vocab.save(out / name)
        return out

    @classmethod
    def load(cls, path: str | Path) -> "ALS":
        """Reads a folder written by :meth:`save` (or ``alsx train``), every file checked.

        Raises:
          ModelError: naming the file that is missing, empty, not JSON / npy / npz, or whose
            shape disagrees with config.json (dim, row or column count) or a vocabulary.
        """
        from alsx.data.vocab import Vocab
        from alsx.errors import ModelError
        from alsx.folder import SEEN_FILE, load_csr, load_table, read_config, read_json

        src = Path(path)
        if not src.is_dir():
            raise ModelError(f"{src}: no such model folder (write one with 'alsx train DATA --out {src}')")
        cfg = read_config(src)
        where = src / "config.json"
        if cfg.get("format_version") != FORMAT_VERSION:
            raise ModelError(f"{where}: unsupported format_version {cfg.get('format_version')!r} "
                             f"(this alsx reads {FORMAT_VERSION})")
        try:
            model = cls(**cfg["hparams"], epochs=cfg["epochs"], alpha=cfg["alpha"], tied=cfg["tied"],
                        seed=cfg["seed"], packing=Packing(**cfg["packing"]), progress=False)
        except (TypeError, ValueError) as e:
            raise ModelError(f"{where}: bad hyper-parameters ({e})") from None
        n_rows, n_cols = cfg["shape"]
        vocabs = {}
        for attr, name, n in (("row_vocab_", "row_vocab.npz", n_rows), ("col_vocab_", "col_vocab.npz", n_cols)):
            if (src / name).exists():
                try:
                    vocab = Vocab.load(src / name)
                except Exception as e:  # BadZipFile, ValueError, OSError: a damaged file
                    raise ModelError(f"{src / name}: not a readable vocabulary ({type(e).__name__}: {e})") from None
                if len(vocab) != n:
                    raise ModelError(f"{src / name}: {len(vocab)} ids, but config.json's shape has {n}")
                vocabs[attr] = vocab
        dim = model.hparams.dim
        model.row_embeddings_ = load_table(src / "row_embeddings.npy", n_rows, dim, "config.json's shape")
        model.col_embeddings_ = load_table(src / "col_embeddings.npy", n_cols, dim, "config.json's shape")
        model.shape_ = (n_rows, n_cols)
        hist = src / "history.json"
        model.history_ = read_json(hist, what="list") if hist.exists() else []
        model.train_ = load_csr(src / SEEN_FILE, n_rows, n_cols)
        for attr, vocab in vocabs.items():
            setattr(model, attr, vocab)
        model.config_ = cfg  # everything config.json holds (alsx train adds data, split, trained_on)
        return model
