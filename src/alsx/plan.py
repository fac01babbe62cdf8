"""Per-device memory planner: will training fit, and if not, what to change.

Two entry points:

* :func:`estimate` works from sizes alone (rows, columns, stored entries, devices)
  before any data is packed: use it to pick the device count, dtype and batch size;
* :func:`plan_engine` is exact for the packed arrays of a ``ShardedEngine`` and is
  checked by the engine before it copies anything to the devices.

Both return a :class:`MemoryPlan` (bytes per device, by component, for the most
loaded device); :func:`check` raises :class:`MemoryPlanError` with concrete
suggestions when the total exceeds the budget.

Components (per device, P devices, d = dim, b = bytes per table element)::

    tables      row and column table shards          (n_rows/P + n_cols/P) d b
    update      the half-step's new table shard       max(n_rows, n_cols)/P d b
    packed      packed batches + exchange plans        per-shard arrays, both sides
    exchange    one batch in flight: rows sent and received 2 P K d b, the gathered
                block S W d 4
    solver      one batch of the solver: Cholesky S d^2 4 x 3; CG S d 4 x 6;
                long rows n_long d (d) 4 x 3
    gramian     G and its all-reduce buffer            2 d^2 4

Not counted in the device total (reported as ``host_init``): the seeded
initial table is drawn whole, eagerly, exactly as ``LocalEngine`` draws it (so
both engines start from identical values), then split into shards on the host:
max(n_rows, n_cols) d 4 bytes, transiently, on the host and the first local device.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from alsx.config import HParams, Packing
from alsx.units import human

GiB = float(1 << 30)

_SLACK = 1.25  # XLA temporaries and fragmentation on top of the named buffers


class MemoryPlanError(MemoryError):
    """The plan exceeds the per-device budget; the message says what to change."""


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """Bytes per device by component, for the most loaded device.

    Attributes:
      n_devices: P.
      dim, dtype, solver, batch_entries: the settings planned for (for the advice).
      components: name -> bytes (see the module doc).
    """

    n_devices: int
    dim: int
    dtype: str
    solver: str
    batch_entries: int
    components: dict[str, int]

    host_init: int = 0

    @property
    def total(self) -> int:
        """Sum of the components times a slack factor for XLA temporaries."""
        return int(sum(self.components.values()) * _SLACK)

    def describe(self) -> str:
        parts = ", ".join(f"{k} {human(v)}" for k, v in sorted(self.components.items(), key=lambda kv: -kv[1]))
        return f"{human(self.total)} per device on {self.n_devices} device(s) ({parts}; x{_SLACK} slack)"


def device_budget(device: Any | None = None) -> int:
    """Bytes one device may use: its allocator limit, or host memory / local devices on CPU."""
    import jax

    dev = device if device is not None else jax.local_devices()[0]
    try:
        stats = dev.memory_stats()
    except Exception:  # noqa: BLE001 - not every backend reports
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    import psutil

    return int(psutil.virtual_memory().available // max(1, jax.local_device_count()))


def _itemsize(dtype: str) -> int:
    return {"float32": 4, "bfloat16": 2}[dtype]


def _solver_bytes(rows: int, width: int, d: int, solver: str, n_long: int = 0) -> int:
    if solver == "cholesky":
        per = rows * d * d * 4 * 3 + n_long * d * d * 4 * 3
    else:
        per = rows * d * 4 * 6 + n_long * d * 4 * 6
    return per + rows * width * 4 * 2  # confidences and scores of the batch


def estimate(
    n_rows: int,
    n_cols: int,
    nnz: int,
    hp: HParams,
    packing: Packing = Packing(),
    n_devices: int = 1,
    tied: bool = False,
    fill: float = 0.7,
) -> MemoryPlan:
    """Plan from sizes alone (before packing).

    Args:
      n_rows, n_cols, nnz: the training matrix.
      hp, packing: the settings to plan for.
      n_devices: P.
      tied: one table.
      fill: expected stored / padded entries of the packing (0.6-0.9 typically).
    """
    P, d, b = n_devices, hp.dim, _itemsize(hp.dtype)
    loc_r, loc_c = -(-n_rows // P), -(-n_cols // P)
    entries = packing.entries_for(d)
    tables = (loc_r if tied else loc_r + loc_c) * d * b
    padded = nnz / P / fill  # per side
    packed = int(2 * padded * (4 + 4) + 2 * padded / packing.min_width * 4 + (loc_r + loc_c) * 4)
    k = min(entries, 2 * -(-entries // P))  # deduplicated rows per owner, with headroom
    exchange = 2 * P * k * d * b + entries * d * 4 + P * k * 4
    rows = entries // packing.min_width
    if hp.solver == "cholesky":
        rows = min(rows, max(1, packing.max_dense_bytes // (4 * d * d)))
    solver = _solver_bytes(rows, packing.min_width, d, hp.solver)
    return _plan(hp, P, entries, max(loc_r, loc_c), max(n_rows, n_cols), tables, packed, exchange, solver)


def plan_engine(engine: Any, row_sides: list, col_sides: list) -> MemoryPlan:
    """Exact plan for a ``ShardedEngine`` from its packed (host) sides, before device transfer.

    Args:
      engine: the engine being built (reads hp, mesh size, layouts).
      row_sides, col_sides: this process's :class:`alsx.data.shard_packing.ShardSide` lists.
    """
    hp = engine.hp
    P, d, b = engine.stats.n_shards, hp.dim, _itemsize(hp.dtype)
    loc_r, loc_c = engine.row_layout.n_local, engine.col_layout.n_local
    packed = exchange = solver = 0
    for sides in (row_sides, col_sides):
        if not sides:
            continue
        side = sides[0]  # all shards share shapes
        packed += sum(leaf.nbytes for leaf in _leaves(side.arrays()))
        for blk in side.blocks:
            _, k = blk.request.shape[1:]
            _, s, w = blk.positions.shape
            exchange = max(exchange, 2 * P * k * d * b + s * w * d * 4)
            solver = max(solver, _solver_bytes(s, w, d, hp.solver))
        if side.long is not None:
            lg = side.long
            _, k = lg.request.shape[1:]
            _, s, w = lg.positions.shape
            exchange = max(exchange, 2 * P * k * d * b + s * w * d * 4)
            solver = max(solver, _solver_bytes(s, w, d, hp.solver, n_long=len(lg.rows)))
    tables = (loc_r if engine.tied else loc_r + loc_c) * d * b
    entries = max(
        (blk.positions.shape[1] * blk.positions.shape[2] for s in (row_sides[:1] + col_sides[:1]) for blk in s.blocks),
        default=0,
    )
    n_max = max(engine.n_rows, engine.n_cols)
    return _plan(hp, P, int(entries), max(loc_r, loc_c), n_max, tables, packed, exchange, solver)


def _plan(
    hp: HParams, P: int, entries: int, loc_max: int, n_max: int, tables: int, packed: int, exchange: int, solver: int
) -> MemoryPlan:
    """The plan of both entry points from their measured parts (loc_max: most local rows of a side,
    n_max: most rows of a side); the update shard, the Gramian and the host init follow from them."""
    d = hp.dim
    return MemoryPlan(
        n_devices=P,
        dim=d,
        dtype=hp.dtype,
        solver=hp.solver,
        batch_entries=entries,
        components={
            "tables": tables,
            "update": loc_max * d * _itemsize(hp.dtype),
            "packed": packed,
            "exchange": exchange,
            "solver": solver,
            "gramian": 2 * d * d * 4,
        },
        host_init=n_max * d * 4,
    )


def _leaves(tree) -> list[np.ndarray]:
    out: list[np.ndarray] = []

    def walk(t):
        if t is None:
            return
        if isinstance(t, dict):
            for v in t.values():
                walk(v)
        elif isinstance(t, (tuple, list)):
            for v in t:
                walk(v)
        else:
            out.append(np.asarray(t))

    walk(tree)
    return out


def check(plan: MemoryPlan, budget: int | None = None) -> MemoryPlan:
    """Raises :class:`MemoryPlanError` if ``plan.total`` exceeds ``budget`` (default: :func:`device_budget`).

    The message names the largest components and what would shrink them.
    """
    budget = device_budget() if budget is None else int(budget)
    if plan.total <= budget:
        return plan
    c = plan.components
    tips = []
    scalable = c.get("tables", 0) + c.get("update", 0) + c.get("packed", 0)  # all shrink as 1/P
    fixed = (sum(c.values()) - scalable) * _SLACK
    if fixed < budget:
        need = int(np.ceil(plan.n_devices * scalable * _SLACK / (budget - fixed)))
        tips.append(
            f"about {max(need, plan.n_devices + 1)} devices instead of {plan.n_devices} "
            "(tables, updates and packed data shrink as 1/P)"
        )
    if plan.dtype == "float32":
        tips.append("--dtype bfloat16 (halves tables, updates and exchange buffers)")
    if c.get("solver", 0) + c.get("exchange", 0) > 0.2 * budget:
        tips.append(
            f"smaller batches (--batch-entries below {plan.batch_entries}: exchange and solver buffers scale with it)"
        )
    if plan.solver == "cholesky":
        tips.append("--solver cg (no d x d matrix per row)")
    raise MemoryPlanError(
        f"training needs {plan.describe()}, over the budget of {human(budget)} per device. "
        f"To fit, use: " + "; or ".join(tips) + "."
    )
