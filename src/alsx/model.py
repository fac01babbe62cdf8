"""The ALS estimator: hyper-parameters in the constructor, ``fit`` learns, serving speaks the data's ids.

>>> model = ALS(dim=64, epochs=10).fit(df, row="user", col="item")   # doctest: +SKIP
>>> ids, scores = model.recommend(["u12", "u7"], k=10)                # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from alsx.config import AUTO, BACKENDS, DEFAULTS, HParams, Packing, resolve_weights
from alsx.data.matrix import Interactions
from alsx.data.split import Split
from alsx.errors import UsageError
from alsx.params import Params
from alsx.serve.estimator import NotFittedError, Serving

FORMAT_VERSION = 1


def as_interactions(x: Any, **columns: Any) -> Interactions:
    """Interactions from Interactions, scipy.sparse or a DataFrame (``columns``: its row=, col=, value=)."""
    columns = {k: v for k, v in columns.items() if v is not None}
    if isinstance(x, Interactions):
        if columns:
            raise UsageError(f"{', '.join(columns)}= name DataFrame columns; this input is Interactions")
        return x
    from alsx.data.ingest import load_interactions

    data, _ = load_interactions(x, **columns)
    return data


class ALS(Params, Serving):
    """Implicit alternating least squares (iALS, Hu et al. 2008; Rendle et al. 2021).

    Args:
      dim: embedding dimension.
      reg: lambda; each row is regularised by reg * (|I_u| + unobserved_weight * n_cols) ** nu.
        'auto' (default): ``reg_ratio`` times alpha0.
      unobserved_weight: alpha0, weight of the push of all pairs towards 0.  'auto' (default):
        ``unobserved_ratio`` times the density nnz / (n_rows n_cols) of the training matrix, so
        unobserved pairs weigh the same in total against the observed ones on any data set.  ``hparams_``
        holds the numbers a fit used.
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
      backend: 'auto', 'cpu' or 'jax' (see ``alsx.core.backends.make_engine``): 'auto' trains
        with the fused CPU kernels on a CPU-only host (CG or block, float32, one process) and with
        JAX (one device or sharded over all) otherwise.
      engine_factory: builds the training engine instead of ``make_engine`` (tests, custom meshes).
      progress: show a progress bar.
      loss_every: compute the training loss every N epochs and after the last (0: never).
        The loss costs about a third of a CG epoch at small d; epochs without it still
        stop on non-finite tables.
      unobserved_ratio, reg_ratio: the ratios an 'auto' unobserved_weight and reg use (``config.resolve_weights``).

    Learned (``fit``, ``load``): row_embeddings_ [n_rows, d], col_embeddings_ [n_cols, d], train_ (seen
    entries), row_vocab_ / col_vocab_ (None: index ids), history_, hparams_, stopped_; serving: its base Serving.
    """

    def __init__(
        self,
        dim: int = DEFAULTS["dim"],
        reg: float | str = DEFAULTS["reg"],
        unobserved_weight: float | str = DEFAULTS["unobserved_weight"],
        nu: float = DEFAULTS["nu"],
        solver: str = DEFAULTS["solver"],
        cg_steps: int = DEFAULTS["cg_steps"],
        block_size: int = DEFAULTS["block_size"],
        epochs: int = DEFAULTS["epochs"],
        dtype: str = DEFAULTS["dtype"],
        alpha: float | None = None,
        tied: bool = False,
        init_scale: float = DEFAULTS["init_scale"],
        init: str = DEFAULTS["init"],
        seed: int = DEFAULTS["seed"],
        packing: Packing = Packing(),
        engine_factory: Callable | None = None,
        progress: bool = True,
        loss_every: int = DEFAULTS["loss_every"],
        backend: str = DEFAULTS["backend"],
        unobserved_ratio: float = DEFAULTS["unobserved_ratio"],
        reg_ratio: float = DEFAULTS["reg_ratio"],
    ):
        # scikit-learn's contract: store the arguments as given; fit checks them (get_params, clone).
        self.dim = dim
        self.reg = reg
        self.unobserved_weight = unobserved_weight
        self.nu = nu
        self.solver = solver
        self.cg_steps = cg_steps
        self.block_size = block_size
        self.epochs = epochs
        self.dtype = dtype
        self.alpha = alpha
        self.tied = tied
        self.init_scale = init_scale
        self.init = init
        self.seed = seed
        self.packing = packing
        self.engine_factory = engine_factory
        self.progress = progress
        self.loss_every = loss_every
        self.backend = backend
        self.unobserved_ratio = unobserved_ratio
        self.reg_ratio = reg_ratio

    # ------------------------------------------------------------------ hyper-parameters
    def checked_hparams(self, train: Interactions | None = None) -> HParams:
        """The HParams of the current arguments, every argument checked (ValueError naming it); an 'auto'
        reg or unobserved_weight is resolved from ``train`` (``config.resolve_weights``), which it then needs."""
        if AUTO in (self.reg, self.unobserved_weight) and train is None:
            raise ValueError("reg or unobserved_weight 'auto' is resolved from the training matrix: give train")
        return self._hparams(*((train.nnz, train.shape) if train is not None else (0, (1, 1))))

    def _hparams(self, nnz: int, shape: tuple[int, int]) -> HParams:
        if self.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs}")
        if self.loss_every < 0:
            raise ValueError(f"loss_every must be >= 0, got {self.loss_every}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        given = self.get_params()  # HParams checks its own fields; those ALS lacks keep config.py's defaults
        given["reg"], given["unobserved_weight"] = resolve_weights(
            given["reg"], given["unobserved_weight"], nnz, shape, self.unobserved_ratio, self.reg_ratio
        )
        return HParams(**{f.name: given[f.name] for f in dataclasses.fields(HParams) if f.name in given})

    @property
    def hparams(self) -> HParams:
        """The fitted hyper-parameters (``hparams_``; the name the CLI and benchmarks use)."""
        if not hasattr(self, "hparams_"):
            raise NotFittedError("this ALS is not fitted: call fit() or ALS.load() first")
        return self.hparams_

    # ------------------------------------------------------------------ training
    def _engine(self, train: Interactions):
        from alsx.core.backends import make_engine

        rows, cols = train.csr(self.alpha), train.csc(self.alpha)
        if self.engine_factory is not None:
            return self.engine_factory(rows, cols, self.hparams, self.packing, self.tied), rows
        return make_engine(rows, cols, self.hparams, self.packing, self.tied, backend=self.backend), rows

    def fit(
        self,
        x: Any,
        *,
        row: str | int | None = None,
        col: str | int | None = None,
        value: str | int | None = None,
        split: Split | None = None,
        eval_every: int = 0,
        eval_ks: tuple[int, ...] = (20, 50),
        callback: Callable[[dict, Any], None] | None = None,
        checkpointer: Any = None,
        step_timeout_s: float | None = None,
        gather_tables: bool = True,
    ) -> ALS:
        """Learns both tables (a new fit forgets the previous one).

        Args:
          x: training interactions: a pandas DataFrame, a scipy.sparse matrix or Interactions;
            with ``split``, pass ``split.train``.
          row, col, value: a DataFrame's columns by name (or 0-based number): the row ids, the
            column ids (both any int or str ids; recommend and similar speak them) and an optional
            value, weighted 1 + alpha * value with the constructor's ``alpha``.  Default: the
            frame's only two columns.
          split: enables evaluation every ``eval_every`` epochs (and after the last).
          callback: called after each epoch with (history record, engine state).  Raising
            ``alsx.callbacks.StopTraining`` ends training after that epoch and keeps the model:
            the tables of that epoch, or those the exception carries (``stopped_`` says so).
          checkpointer: an ``alsx.checkpoint.Checkpointer``: resume from its newest good
            checkpoint and save on its schedule.  Each step stores the history up to it, so
            ``history_`` of a resumed fit holds every epoch, the ones before the resume too.
          step_timeout_s: stop with an error when one epoch takes longer (hung peer).
          gather_tables: copy the final tables to this host (``row_embeddings_``,
            ``col_embeddings_``); False keeps them on the devices only (``state_`` and
            ``engine_``), for tables larger than one host.
        """
        # Imported here, not at the top: alsx.train loads JAX, which must wait until the CLI has set
        # XLA_FLAGS (--cpu-devices), and `import alsx` stays light.
        from alsx.train import run, sharded_eval_topk

        self._hparams(1, (1, 1))  # every argument checked before the data is read ('auto' as for one entry)
        if value is not None and self.alpha is None:
            warnings.warn(
                f"fit(value={value!r}) without ALS(alpha=...): every entry weighs 1 (confidences are "
                "1 + alpha * value)",
                UserWarning,
                stacklevel=2,
            )
        train = as_interactions(x, row=row, col=col, value=value)
        self.hparams_ = self.checked_hparams(train)
        self._forget()  # cached Gramians and unit tables of a previous fit
        engine, rows_csr = self._engine(train)
        self.train_ = rows_csr
        self.row_vocab_, self.col_vocab_ = train.row_vocab, train.col_vocab
        self.shape_ = train.shape
        self.engine_name_ = type(engine).__name__
        self.engine_ = engine  # callbacks turn states into tables with engine_.to_numpy (early stopping)
        self.pack_stats_ = engine.stats
        self.history_ = []
        result = run(
            engine,
            self.epochs,
            self.seed,
            split=split,
            alpha=self.alpha,
            eval_every=eval_every,
            eval_ks=eval_ks,
            callbacks=[callback] if callback is not None else [],
            checkpointer=checkpointer,
            step_timeout_s=step_timeout_s,
            loss_every=self.loss_every,
            progress=self.progress,
            counts=lambda: (rows_csr.lengths(), np.bincount(rows_csr.indices, minlength=rows_csr.n_cols)),
        )
        st = result.state
        self.history_ = result.history
        self.stopped_ = (
            None
            if result.stopped is None
            else {  # a callback raised StopTraining
                "epoch": st.epoch,
                "reason": result.stopped,
                "tables_from_epoch": result.tables_epoch,
            }
        )
        self.state_, self.engine_ = st, engine
        engine.release()  # epoch buffers, not needed any more
        if result.tables is not None:  # a callback stopped training and handed back its epoch's tables
            self.row_embeddings_, self.col_embeddings_ = result.tables
        elif gather_tables:
            self.row_embeddings_, self.col_embeddings_ = engine.to_numpy(st)
        else:
            self.row_embeddings_ = self.col_embeddings_ = None
        self.eval_topk_ = sharded_eval_topk(engine, st)
        return self

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "hparams": dataclasses.asdict(self.hparams),
            "epochs": self.epochs,
            "alpha": self.alpha,
            "tied": self.tied,
            "seed": self.seed,
            "packing": dataclasses.asdict(self.packing),
            "shape": list(getattr(self, "shape_", (0, 0))),
        }

    def save(self, path: str | Path, tables: bool = True) -> Path:
        """Writes npy tables, json config/history, npz vocabularies and training rows (never pickle).

        ``tables=False``: everything but the tables (written elsewhere, e.g. shard by shard
        by every process of a multi-process run: ``ShardedEngine.write_tables``).
        """
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        if tables:
            self._check_fitted()
            np.save(out / "row_embeddings.npy", self.row_embeddings_.astype(np.float32))
            np.save(out / "col_embeddings.npy", self.col_embeddings_.astype(np.float32))
        (out / "config.json").write_text(json.dumps(self.config(), indent=2))
        (out / "history.json").write_text(json.dumps(self.history_, indent=2))
        np.savez(
            out / "train.npz",
            indptr=self.train_.indptr,
            indices=self.train_.indices,
            values=self.train_.values,
            n_cols=np.int64(self.train_.n_cols),
        )
        for name, vocab in (("row_vocab.npz", self.row_vocab_), ("col_vocab.npz", self.col_vocab_)):
            if vocab is not None:
                vocab.save(out / name)
        return out

    @classmethod
    def load(cls, path: str | Path) -> ALS:
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
            raise ModelError(
                f"{where}: unsupported format_version {cfg.get('format_version')!r} (this alsx reads {FORMAT_VERSION})"
            )
        try:
            model = cls(
                **cfg["hparams"],
                epochs=cfg["epochs"],
                alpha=cfg["alpha"],
                tied=cfg["tied"],
                seed=cfg["seed"],
                packing=Packing(**cfg["packing"]),
                progress=False,
            )
            model.hparams_ = model.checked_hparams()
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
        model.row_vocab_ = model.col_vocab_ = None  # index ids unless a vocabulary file says otherwise
        for attr, vocab in vocabs.items():
            setattr(model, attr, vocab)
        model.config_ = cfg  # everything config.json holds (alsx train adds data, split, trained_on)
        model.engine_ = model.state_ = model.eval_topk_ = None  # no training engine: tables on the host
        return model
