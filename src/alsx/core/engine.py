"""The engine contract, written once, and ``LocalEngine``.

An engine turns (row CSR, column CSR, hyper-parameters) into its own layout once (packed
blocks on a device, streamed row ranges, shards over a mesh, CSRs for Numba kernels), then
``epoch`` maps an :class:`ALSState` to the next one.  :class:`Engine` names every method the
rest of alsx calls on an engine (training, checkpoints, the estimator); what is the same for
every engine is written here once:

* the epoch: rows against the fixed column table, then columns against the new rows, one
  table for both when tied (:func:`alternate`);
* the loss, assembled from its parts (:meth:`Engine.loss_parts`);
* checkpoint export and import in external row order on a one-device mesh, rotating a CPU
  engine's eigenbasis back (:meth:`Engine.to_external`, :meth:`Engine.from_external`);
* swapping hyper-parameters that need no re-packing (:meth:`Engine.set_hparams`).

Each engine implements how one half-step (:meth:`Engine.half_step`) and the loss parts run on
its hardware.  The engines: ``LocalEngine`` (here, one device), ``StreamingEngine``
(``alsx.core.streaming``, out of core), ``ShardedEngine`` (``alsx.core.sharded``, a mesh of
devices and processes), ``CpuEngine`` (``alsx.core.cpu``, Numba kernels).  The factory that
picks one is ``alsx.core.backends.make_engine``.
"""

from __future__ import annotations

import abc
import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from alsx.config import HParams, Packing
from alsx.core.objective import Loss, table_terms
from alsx.core.sharding import make_mesh, table_sharding
from alsx.core.state import ALSState, init_state
from alsx.core.step import half_step, observed_loss
from alsx.data.matrix import CSR
from alsx.data.packing import PackedSide, pack

#: The sides of the matrix a half-step solves: its rows (table w) or its columns (table h).
SIDES = ("rows", "cols")
#: HParams fields an existing engine can take without re-packing (see Engine.set_hparams).
SWAPPABLE = ("reg", "unobserved_weight", "nu", "cg_steps", "init", "init_scale")


@dataclasses.dataclass
class PackStats:
    """What packing cost: fill ratios and seconds, for logs and benchmarks."""

    row_fill: float
    col_fill: float
    seconds: float


def alternate(half: Callable, w: Any, h: Any, tied: bool) -> tuple[Any, Any]:
    """One epoch from two half-steps: rows of ``w`` against ``h``, then columns against the new ``w``.

    ``half(x, other, side) -> (new x, other)`` re-solves the rows of ``side`` ('rows' or 'cols');
    it hands ``other`` back as the next half-step must read it (the CPU engine rotates it into
    its new basis; the others return it as given).  Tied: one table, solved twice.  Works on
    device arrays, host arrays and inside ``shard_map``.
    """
    w, h_next = half(w, h, "rows")
    h = w if tied else h_next
    h, w_next = half(h, w, "cols")
    return (h, h) if tied else (w_next, h)


class Engine(abc.ABC):
    """What every training engine offers (one contract, documented here once).

    Attributes:
      hp: hyper-parameters (replace through :meth:`set_hparams`).
      tied: one table for rows and columns.
      n_rows, n_cols: the training matrix's shape.
      stats: packing facts for logs and benchmarks (``PackStats``; ``ShardStats`` when sharded).
      keeps_basis: True when states hold tables rotated by ``state.basis`` and checkpoints
        keep that basis (the CPU engine); others rotate restored tables back.
      kind: short name for config files and logs ('local', 'streaming', 'sharded', 'cpu').
      host_views: ``to_numpy`` may return read-only views instead of copies (tables too large
        to copy twice).
    """

    hp: HParams
    tied: bool
    n_rows: int
    n_cols: int
    stats: Any
    keeps_basis: bool = False
    kind: str = ""
    host_views: bool = False

    # ---- training ---------------------------------------------------------------------------
    def init_state(self, seed: int) -> ALSState:
        """Fresh tables (the same for every engine and seed), in this engine's layout."""
        return init_state(seed, self.n_rows, self.n_cols, self.hp, self.tied)

    @abc.abstractmethod
    def half_step(self, x: Any, other: Any, side: str) -> tuple[Any, Any]:
        """Re-solves every row of ``side``: x [n, d] against the fixed ``other`` [m, d].

        Returns (new x, ``other`` as the next half-step reads it): see :func:`alternate`.
        """

    def epoch(self, state: ALSState) -> ALSState:
        """The next state: both half-steps (:func:`alternate`)."""
        w, h = alternate(self.half_step, state.w, state.h, self.tied)
        return ALSState(w=w, h=h, epoch=state.epoch + 1, tied=self.tied)

    def describe(self) -> str:
        """One line for logs: how this engine runs (its plan)."""
        return type(self).__name__

    def epoch_record(self) -> dict:
        """Engine facts for the history record of the epoch just run ({} by default)."""
        return {}

    # ---- the objective ------------------------------------------------------------------------
    @abc.abstractmethod
    def loss_parts(self, state: ALSState) -> tuple[Any, Any, Any, Any]:
        """(observed loss, Gramian of w [d, d], Gramian of h [d, d], regularisation), scalars and
        arrays of this engine's kind: the parts :meth:`loss` assembles."""

    def loss(self, state: ALSState) -> Loss:
        """The iALS objective (``alsx.core.objective``) at ``state``."""
        obs, gw, gh, reg = self.loss_parts(state)
        # <G_w, G_h>_F on the host in float64: d x d numbers, no device program to compile.
        unobserved = self.hp.unobserved_weight * float(np.sum(np.asarray(gw, np.float64) * np.asarray(gh, np.float64)))
        return Loss(float(obs), unobserved, float(reg))

    # ---- tables out and in --------------------------------------------------------------------
    def to_numpy(self, state: ALSState) -> tuple[np.ndarray, np.ndarray]:
        """float32 host tables [n_rows, d], [n_cols, d] in external row order and original basis
        (writable copies, or read-only views where :attr:`host_views`)."""
        host = np.asarray if self.host_views else np.array
        w = host(state.w.astype(jnp.float32))
        return w, (w if self.tied else host(state.h.astype(jnp.float32)))

    @property
    def mesh(self) -> Mesh:
        """The devices the tables live on (checkpoints restore onto it): one device by default."""
        return make_mesh(jax.devices()[:1])

    def to_external(self, state: ALSState) -> tuple[jax.Array, jax.Array]:
        """Tables in external row order sharded by rows over :attr:`mesh` (what checkpoints store)."""
        sharding = table_sharding(self.mesh)
        return jax.device_put(state.w, sharding), jax.device_put(state.h, sharding)

    def from_external(self, w: jax.Array, h: jax.Array, epoch: int, basis: np.ndarray | None = None) -> ALSState:
        """Inverse of :meth:`to_external`: tables whose first n rows are in external order (stored
        @ ``basis``^T gives the original tables) -> a state of this engine."""
        if basis is not None:  # tables rotated by a CPU engine: back to the original basis
            back = jnp.asarray(basis.T, jnp.float32)
            w = jnp.matmul(w.astype(jnp.float32), back).astype(w.dtype)
            h = w if self.tied else jnp.matmul(h.astype(jnp.float32), back).astype(h.dtype)
        return self.place_external(w, h, epoch)

    def place_external(self, w: jax.Array, h: jax.Array, epoch: int) -> ALSState:
        """Tables in external order and original basis -> state (one device: the first n rows)."""
        w = w[: self.n_rows]
        h = w if self.tied else h[: self.n_cols]
        return ALSState(w=w, h=h, epoch=int(epoch), tied=self.tied)

    # ---- life cycle -------------------------------------------------------------------------
    def set_hparams(self, hp: HParams) -> None:
        """Swaps the fields of ``hp`` that need no re-packing (:data:`SWAPPABLE`) on this engine,
        keeping the packed input and compiled kernels (``alsx tune`` trials).

        Raises:
          ValueError: ``hp`` changes anything else (dim, solver, block_size, dtype).
        """
        fixed = [
            f.name
            for f in dataclasses.fields(HParams)
            if f.name not in SWAPPABLE and getattr(hp, f.name) != getattr(self.hp, f.name)
        ]
        if fixed:
            raise ValueError(
                f"set_hparams cannot change {', '.join(fixed)} (they need re-packing; build a new "
                "engine): " + ", ".join(f"{f} {getattr(self.hp, f)!r} -> {getattr(hp, f)!r}" for f in fixed)
            )
        self.hp = hp
        self.hparams_changed()

    def hparams_changed(self) -> None:  # noqa: B027 - an optional hook: most engines derive nothing from hp
        """Hook after :meth:`set_hparams`: refresh whatever was derived from ``self.hp``."""

    def release(self) -> None:  # noqa: B027 - optional: only engines with scratch buffers override it
        """Gives back scratch memory kept between epochs (once training is over; live states stay)."""


def check_shapes(rows: CSR, cols: CSR, tied: bool) -> None:
    """The checks every engine makes on its input."""
    if tied and rows.n_rows != rows.n_cols:
        raise ValueError(f"tied embeddings need a square matrix, got {rows.n_rows} x {rows.n_cols}")
    if cols.n_rows != rows.n_cols or cols.n_cols != rows.n_rows:
        raise ValueError(
            f"cols must be the transpose of rows: {rows.n_rows} x {rows.n_cols} vs {cols.n_rows} x {cols.n_cols}"
        )


class DeviceEngine(Engine):
    """What the one-device JAX engines share: per-row entry counts on the device, and the
    unobserved and regularisation parts of the loss from them."""

    def counts(self, side: str) -> jax.Array:
        """float32 [n] stored entries per row of ``side``."""
        raise NotImplementedError

    @abc.abstractmethod
    def observed(self, state: ALSState) -> Any:
        """sum over stored entries of c_ui (<w_u, h_i> - 1)^2."""

    def loss_parts(self, state: ALSState) -> tuple[Any, Any, Any, Any]:
        hp = self.hp
        counts = self.counts("rows"), self.counts("cols")
        gw, gh, reg = table_terms(
            state.w, state.h, *counts, hp.reg, hp.unobserved_weight, hp.nu, n_rows=self.n_rows, n_cols=self.n_cols
        )
        return self.observed(state), gw, gh, reg


class LocalEngine(DeviceEngine):
    """iALS on the default device, every packed block kept there.

    Args:
      rows: CSR of the training matrix (rows of W against columns of H).
      cols: CSR of its transpose.
      hp: hyper-parameters.
      packing: block layout.
      tied: one table for rows and columns (square matrices only).
    """

    kind = "local"

    def __init__(self, rows: CSR, cols: CSR, hp: HParams, packing: Packing = Packing(), tied: bool = False):
        check_shapes(rows, cols, tied)
        t = time.perf_counter()
        dense = hp.solver == "cholesky"
        self.hp = hp
        self.tied = tied
        self.n_rows, self.n_cols = rows.n_rows, rows.n_cols
        row_side: PackedSide = pack(rows, hp.dim, packing, dense_rows=dense)
        col_side: PackedSide = pack(cols, hp.dim, packing, dense_rows=dense)
        self.stats = PackStats(row_side.fill_ratio, col_side.fill_ratio, time.perf_counter() - t)
        self._sides = {"rows": jax.device_put(row_side.arrays()), "cols": jax.device_put(col_side.arrays())}

    def half_step(self, x, other, side):
        hp = self.hp
        return half_step(
            x,
            other,
            self._sides[side],
            hp.reg,
            hp.unobserved_weight,
            hp.nu,
            solver=hp.solver,
            cg_steps=hp.cg_steps,
            block_size=hp.block_width("jax"),
        ), other

    def counts(self, side: str) -> jax.Array:
        return self._sides[side]["counts"]

    def packed(self, side: str) -> dict:
        """The device arrays of one side's packed blocks ('rows' or 'cols'), e.g. to count the bytes a
        half-step moves (benchmarks/gpu.py)."""
        return self._sides[side]

    def observed(self, state: ALSState):
        return observed_loss(state.w, state.h, self._sides["rows"])
