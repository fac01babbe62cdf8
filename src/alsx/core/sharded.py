"""iALS over a mesh of devices (one or many processes): :class:`ShardedEngine`.

Both tables are sharded by rows over the ``SHARD`` axis (``TABLE`` spec) in the
balanced layouts of :mod:`alsx.core.sharding`.  Each device packs and solves the
rows it owns, so solved rows are written into the owner's shard in place: the
scatter back needs no communication at all.  Per half-epoch a device

1. all-reduces the Gramian:  G = psum_s(H_s^T H_s)                  [d, d]
2. per batch, fetches the column rows its batch reads from their owners with one
   all-to-all (:func:`alsx.core.exchange.fetch_rows`), and
3. solves its rows with the single-device building blocks of :mod:`alsx.core.step`.

The same jit + shard_map program runs on 1 device, N local devices and N
processes; only the mesh differs.  Tables are held in the internal (permuted)
row order; :meth:`ShardedEngine.to_numpy` and :meth:`ShardedEngine.to_external`
restore the external order.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from alsx.config import HParams, Packing
from alsx.core import normal_eq as ne
from alsx.core.engine import Engine, alternate, check_shapes
from alsx.core.exchange import fetch_rows, serve_lists
from alsx.core.objective import regularisation_term, row_regularisation
from alsx.core.sharded_host import HostAccess, gather_host, permute_program, permute_rows  # noqa: F401
from alsx.core.sharding import REPLICATED, SHARD, STACKED, TABLE, local_shards, make_mesh, n_shards, stacked_sharding
from alsx.core.state import ALSState, init_state
from alsx.core.step import observed_loss, solve_block, solve_long
from alsx.data.layout import engine_layouts
from alsx.data.matrix import CSR
from alsx.data.shard_packing import ShardSide, SideShape, pack_shard, side_shape, stack
from alsx.plan import check, plan_engine

log = logging.getLogger(__name__)

# The step's scans start their carries from constants (jnp.zeros), which shard_map's
# varying-axis checker rejects once the body mixes in per-shard data.  The bodies
# here only reduce with explicit psums, so the check is off rather than editing step.py.
_CHECK_VMA = False


@dataclasses.dataclass(frozen=True)
class ShardStats:
    """Host-side facts about the sharded layout (for logs, the planner and benchmarks).

    Attributes:
      n_shards: P.
      row_nnz, col_nnz: int64 [P] stored entries each shard solves, per side.
      row_caps, col_caps: exchange capacity K per block (then long rows) per side.
      row_batches, col_batches: batches per block (then long chunks) per side.
      row_unique, col_unique: distinct rows requested, summed over this process's shards and batches.
      seconds: packing time.
    """

    n_shards: int
    row_nnz: np.ndarray
    col_nnz: np.ndarray
    row_caps: tuple[int, ...]
    col_caps: tuple[int, ...]
    row_batches: tuple[int, ...]
    col_batches: tuple[int, ...]
    row_unique: int
    col_unique: int
    seconds: float

    def imbalance(self) -> tuple[float, float]:
        """max / mean stored entries per shard, for the row and the column side."""
        return (
            float(self.row_nnz.max() / max(self.row_nnz.mean(), 1)),
            float(self.col_nnz.max() / max(self.col_nnz.mean(), 1)),
        )


def _batches(shape: SideShape) -> tuple[int, ...]:
    return tuple(shape.n_batches) + ((shape.long[2],) if shape.long is not None else ())


def agree_max(values: tuple[int, ...]) -> tuple[int, ...]:
    """Element-wise max of an int tuple over all processes (identity with one process)."""
    if jax.process_count() == 1 or not values:
        return tuple(int(v) for v in values)
    from jax.experimental import multihost_utils

    every = multihost_utils.process_allgather(np.asarray(values, np.int32))  # [n_processes, len]
    return tuple(int(v) for v in np.asarray(every).reshape(-1, len(values)).max(axis=0))


def _squeeze(tree):
    """Drops the leading per-device axis ([1, ...] inside shard_map -> [...])."""
    return jax.tree.map(lambda a: a[0], tree)


class ShardedEngine(HostAccess, Engine):
    """iALS with both tables sharded by rows over ``mesh`` (same methods as ``LocalEngine``).

    Args:
      rows: CSR of the training matrix in external ids; only the rows this process's
        shards own are read, so other rows may be left empty (see ``row_counts``).
      cols: CSR of its transpose (same remark for columns).
      hp: hyper-parameters.
      packing: block layout (same meaning as for ``LocalEngine``).
      tied: one table for rows and columns (square matrices only).
      mesh: a 1-D mesh with axis ``SHARD``; default every device of every process.
      row_counts, col_counts: int [n_rows], [n_cols] global stored entries per row and per
        column.  Needed only when ``rows`` / ``cols`` hold just this process's part;
        default their lengths.
      memory_budget: per-device bytes for the memory planner; None: what the device
        reports (host memory / local devices on CPU).
      check_memory: run the planner and raise :class:`alsx.plan.MemoryPlanError` before
        copying anything to the devices if the plan does not fit (False skips it).
    """

    kind = "sharded"

    def __init__(
        self,
        rows: CSR,
        cols: CSR,
        hp: HParams,
        packing: Packing = Packing(),
        tied: bool = False,
        mesh: Mesh | None = None,
        *,
        row_counts: np.ndarray | None = None,
        col_counts: np.ndarray | None = None,
        memory_budget: int | None = None,
        check_memory: bool = True,
    ):
        check_shapes(rows, cols, tied)
        t = time.perf_counter()
        self.hp = hp
        self.tied = tied
        self._mesh = make_mesh() if mesh is None else mesh
        self.n_rows, self.n_cols = rows.n_rows, rows.n_cols
        P = n_shards(self.mesh)
        rc = np.asarray(rows.lengths() if row_counts is None else row_counts, np.int64)
        cc = np.asarray(cols.lengths() if col_counts is None else col_counts, np.int64)
        self.row_layout, self.col_layout = engine_layouts(rc, cc, self.mesh, tied)
        dense = hp.solver == "cholesky"
        shape_r = side_shape(rc, self.row_layout, hp.dim, packing, dense)
        shape_c = side_shape(cc, self.col_layout, hp.dim, packing, dense)
        self._mine = local_shards(self.mesh)
        r_sides = [pack_shard(rows, self.row_layout, self.col_layout, s, shape_r) for s in self._mine]
        c_sides = [pack_shard(cols, self.col_layout, self.row_layout, s, shape_c) for s in self._mine]
        r_sides, row_caps = self._agree_caps(r_sides)
        c_sides, col_caps = self._agree_caps(c_sides)
        self.shapes = (shape_r, shape_c)
        self.stats = ShardStats(
            n_shards=P,
            row_nnz=self.row_layout.loads(rc).astype(np.int64),
            col_nnz=self.col_layout.loads(cc).astype(np.int64),
            row_caps=row_caps,
            col_caps=col_caps,
            row_batches=_batches(shape_r),
            col_batches=_batches(shape_c),
            row_unique=sum(s.unique for s in r_sides),
            col_unique=sum(s.unique for s in c_sides),
            seconds=time.perf_counter() - t,
        )
        if check_memory:
            check(plan_engine(self, r_sides, c_sides), memory_budget)
        self._rows = self._setup_exchange(self._put_stacked(stack(r_sides)))
        self._cols = self._setup_exchange(self._put_stacked(stack(c_sides)))
        del r_sides, c_sides
        self.hparams_changed()
        log.info(
            "sharded engine: P=%d, nnz per shard max/mean rows %.3f cols %.3f, packed in %.1fs",
            P,
            *self.stats.imbalance(),
            self.stats.seconds,
        )

    # ---- host -> device -------------------------------------------------------------------

    def _agree_caps(self, sides: list[ShardSide]) -> tuple[list[ShardSide], tuple[int, ...]]:
        """Raises every shard's exchange capacities to the max over all shards of all processes."""
        n = len(sides[0].caps()) if sides else 0
        local = tuple(max(s.caps()[i] for s in sides) for i in range(n))
        caps = agree_max(local)
        return [s.with_caps(caps) for s in sides], caps

    def _put_stacked(self, tree):
        """Host leaves [n_local_shards, ...] -> global arrays [P, ...] sharded STACKED."""
        sharding = stacked_sharding(self.mesh)
        devices = self.mesh.devices.reshape(-1)
        P = n_shards(self.mesh)

        def put(x: np.ndarray) -> jax.Array:
            pieces = [jax.device_put(x[i : i + 1], devices[s]) for i, s in enumerate(self._mine)]
            return jax.make_array_from_single_device_arrays((P,) + x.shape[1:], sharding, pieces)

        return jax.tree.map(put, tree)

    def _setup_exchange(self, side: dict) -> dict:
        """Replaces every block's request lists [P, n_b, P, K] by the serve lists (one all-to-all, once)."""

        def swap(tree):
            tree = _squeeze(tree)
            tree = {
                "blocks": tuple(((serve_lists(req), pos), conf, rows) for (req, pos), conf, rows in tree["blocks"]),
                "long": None
                if tree["long"] is None
                else ((serve_lists(tree["long"][0][0]), tree["long"][0][1]),) + tuple(tree["long"][1:]),
                "counts": tree["counts"],
            }
            return jax.tree.map(lambda a: a[None], tree)

        fn = jax.jit(jax.shard_map(swap, mesh=self.mesh, in_specs=(STACKED,), out_specs=STACKED))
        return fn(side)

    # ---- the program ----------------------------------------------------------------------

    def _half(self, w: jax.Array, h: jax.Array, side: dict, n_other: int) -> jax.Array:
        """Inside shard_map: re-solves this shard's rows of w [n_local, d] against sharded h."""
        hp = self.hp
        d = w.shape[1]
        gram = jax.lax.psum(ne.gramian(h), SHARD)  # [d, d]: padding slots are zero rows
        lam = row_regularisation(side["counts"], n_other, hp.reg, hp.unobserved_weight, hp.nu)
        bs = hp.block_width("jax")
        out = jnp.zeros_like(w)  # rows without entries get the exact optimum 0
        for block in side["blocks"]:
            x = solve_block(w, h, gram, block, lam, hp.unobserved_weight, hp.solver, hp.cg_steps, fetch_rows, bs)
            # Solved rows are this shard's own slots: a local write, no scatter traffic.
            out = out.at[block[2].reshape(-1)].set(x.reshape(-1, d).astype(w.dtype), mode="drop")
        if side["long"] is not None:
            x = solve_long(w, h, gram, side["long"], lam, hp.unobserved_weight, hp.solver, hp.cg_steps, fetch_rows, bs)
            out = out.at[side["long"][3]].set(x.astype(w.dtype), mode="drop")
        return out

    def _compile_epoch(self):
        tied, n_rows, n_cols = self.tied, self.n_rows, self.n_cols

        def body(w, h, rside, cside):
            # w [n_local_rows, d], h [n_local_cols, d]; sides are this shard's packed arrays.
            sides = {"rows": (_squeeze(rside), n_cols), "cols": (_squeeze(cside), n_rows)}
            return alternate(lambda x, other, side: (self._half(x, other, *sides[side]), other), w, h, tied)

        fn = jax.shard_map(
            body,
            mesh=self.mesh,
            in_specs=(TABLE, TABLE, STACKED, STACKED),
            out_specs=(TABLE, TABLE),
            check_vma=_CHECK_VMA,
        )
        return jax.jit(fn)

    def _compile_half(self, side: str):
        n_other = self.n_cols if side == "rows" else self.n_rows

        def body(x, other, packed):
            return self._half(x, other, _squeeze(packed), n_other)

        return jax.jit(
            jax.shard_map(body, mesh=self.mesh, in_specs=(TABLE, TABLE, STACKED), out_specs=TABLE, check_vma=_CHECK_VMA)
        )

    def _compile_loss(self):
        hp, n_rows, n_cols = self.hp, self.n_rows, self.n_cols

        def body(w, h, rside, cside):
            rside, cside = _squeeze(rside), _squeeze(cside)
            obs = jax.lax.psum(observed_loss(w, h, rside, gather=fetch_rows), SHARD)
            gw = jax.lax.psum(ne.gramian(w), SHARD)
            gh = jax.lax.psum(ne.gramian(h), SHARD)
            lam_w = row_regularisation(rside["counts"], n_cols, hp.reg, hp.unobserved_weight, hp.nu)
            lam_h = row_regularisation(cside["counts"], n_rows, hp.reg, hp.unobserved_weight, hp.nu)
            reg = jax.lax.psum(regularisation_term(w, lam_w) + regularisation_term(h, lam_h), SHARD)
            return obs, gw, gh, reg

        fn = jax.shard_map(
            body,
            mesh=self.mesh,
            in_specs=(TABLE, TABLE, STACKED, STACKED),
            out_specs=(REPLICATED,) * 4,
            check_vma=_CHECK_VMA,
        )
        return jax.jit(fn)

    def traffic(self) -> dict[str, int]:
        """Analytic bytes per device for one epoch (both half-steps).

        Returns:
          all_to_all: all-to-all result buffers (P K d per batch, table dtype), the own
            block included; ``all_to_all_sent`` is the (P - 1) / P that crosses devices.
          all_reduce: Gramian all-reduce buffers (d^2 float32 per half-step).
          alx_all_gather, alx_all_reduce: what the ALX gather (all-gather the [S, W] ids,
            psum the masked [P, S, W, d] float32 rows) would produce for the same batches.
        """
        hp = self.hp
        P, d = n_shards(self.mesh), hp.dim
        isz = jnp.dtype(jnp.bfloat16 if hp.dtype == "bfloat16" else jnp.float32).itemsize
        # A long chunk is gathered once per pass over A: b and A for Cholesky, b, A x0 and
        # one matvec per step for CG (the step recomputes instead of holding sub-rows).
        passes = 2 if hp.solver == "cholesky" else 2 + hp.cg_steps
        a2a = ids = alx = 0
        for shape, caps in ((self.shapes[0], self.stats.row_caps), (self.shapes[1], self.stats.col_caps)):
            items = [(nb, s, w, 1) for nb, s, w in zip(shape.n_batches, shape.per_batch, shape.widths)]
            if shape.long is not None:
                items.append((shape.long[2], shape.long[1], shape.width, passes))
            for (nb, s, w, reps), k in zip(items, caps):
                a2a += reps * nb * P * k * d * isz
                ids += reps * nb * P * s * w * 4
                alx += reps * nb * P * s * w * d * 4
        return {
            "all_to_all": a2a,
            "all_to_all_sent": a2a * (P - 1) // P,
            "all_reduce": 2 * d * d * 4,
            "alx_all_gather": ids,
            "alx_all_reduce": alx,
        }

    def lower_epoch(self, state: ALSState):
        """The lowered epoch program (for HLO inspection and byte counts in benchmarks)."""
        return self._epoch.lower(state.w, state.h, self._rows, self._cols)

    # ---- the engine contract -------------------------------------------------------------------

    @property
    def mesh(self) -> Mesh:
        return self._mesh

    def describe(self) -> str:
        return f"{jax.process_count()} processes, {jax.device_count()} devices"

    def hparams_changed(self) -> None:
        """The programs close over ``hp``: compile them again (the packed sides stay)."""
        self._epoch = self._compile_epoch()
        self._loss = self._compile_loss()
        self._halves: dict = {}

    def init_state(self, seed: int) -> ALSState:
        """The tables ``LocalEngine.init_state(seed)`` gives, placed in the sharded layout."""
        hp = self.hp
        with jax.default_device(jax.local_devices()[0]):
            st = init_state(seed, self.n_rows, self.n_cols, hp, self.tied)
            w_host = np.asarray(st.w)
            h_host = w_host if self.tied else np.asarray(st.h)
        w = self.place(w_host, self.row_layout)
        h = w if self.tied else self.place(h_host, self.col_layout)
        return ALSState(w=w, h=h, epoch=0, tied=self.tied)

    def half_step(self, x: jax.Array, other: jax.Array, side: str) -> tuple[jax.Array, jax.Array]:
        """One half-step as its own program (:meth:`epoch` runs both in one)."""
        if side not in self._halves:
            self._halves[side] = self._compile_half(side)
        return self._halves[side](x, other, self._rows if side == "rows" else self._cols), other

    def epoch(self, state: ALSState) -> ALSState:
        """Both half-steps (:func:`alternate`) in one compiled program."""
        w, h = self._epoch(state.w, state.h, self._rows, self._cols)
        if self.tied:
            h = w
        return ALSState(w=w, h=h, epoch=state.epoch + 1, tied=self.tied)

    def loss_parts(self, state: ALSState):
        return self._loss(state.w, state.h, self._rows, self._cols)

    def to_numpy(self, state: ALSState) -> tuple[np.ndarray, np.ndarray]:
        """float32 host tables [n_rows, d], [n_cols, d] in external row order (on every process)."""
        w = gather_host(state.w)[self.row_layout.position].astype(np.float32)
        if self.tied:
            return w, w
        return w, gather_host(state.h)[self.col_layout.position].astype(np.float32)
