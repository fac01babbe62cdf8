"""Row ownership: which shard (device) holds each row of a table, and where (host-side, no JAX).

Tables are sharded by rows over a 1-D mesh of every device of every process (see
:mod:`alsx.core.sharding`, which re-exports these names).  Row ``u`` of a table (its
external index) lives in slot ``position[u]`` of the device-side table, laid out as
``n_shards`` contiguous blocks of ``n_local`` slots; ``external[slot]`` is the row in a
slot (-1 for padding).  Rows are assigned to shards so stored entries per shard are
balanced (web graphs are heavily skewed, see :func:`balanced_layout`); inside a shard,
rows keep increasing external order, so local order agrees with external order (top-k
tie breaks rely on this).

The data layer routes entries to their owners with these layouts
(:mod:`alsx.data.partitioned`, :mod:`alsx.data.shard_packing`); the engines place their
tables by them.  A ``mesh`` here is anything with ``devices`` (an array of devices that
have ``process_index``), e.g. a ``jax.sharding.Mesh``.
"""

from __future__ import annotations

import dataclasses
import heapq
from typing import Any

import numpy as np

# How many of the heaviest rows are placed one by one through a heap (LPT); the
# light tail is dealt vectorised.
_LPT_HEAD = 1 << 17


@dataclasses.dataclass(frozen=True)
class RowLayout:
    """Which shard owns each row of one table, and where.

    Attributes:
      n: external rows.
      n_shards: P.
      n_local: slots per shard (ceil(n / P), at least 1).
      position: int64 [n] device slot of each external row (shard * n_local + local).
      external: int64 [P * n_local] external row in each slot, -1 for padding.
    """

    n: int
    n_shards: int
    n_local: int
    position: np.ndarray
    external: np.ndarray

    @property
    def n_slots(self) -> int:
        return self.n_shards * self.n_local

    def owner(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard, local slot) of external row ids."""
        pos = self.position[np.asarray(ids, dtype=np.int64)]
        return pos // self.n_local, pos % self.n_local

    def shard_rows(self, shard: int) -> np.ndarray:
        """int64 [n_local] external rows of ``shard``'s slots (-1 for padding)."""
        return self.external[shard * self.n_local : (shard + 1) * self.n_local]

    def loads(self, weights: np.ndarray) -> np.ndarray:
        """float64 [P] total weight (e.g. stored entries) per shard."""
        shard = self.position // self.n_local
        return np.bincount(shard, weights=np.asarray(weights, np.float64), minlength=self.n_shards)

    def imbalance(self, weights: np.ndarray) -> float:
        """max / mean shard load (1.0 is perfect)."""
        loads = self.loads(weights)
        return float(loads.max() / max(loads.mean(), 1e-300))


def process_groups(mesh: Any) -> int:
    """Number of processes when each owns an equal run of consecutive shards, else 1.

    With G > 1 groups, :func:`balanced_layout` gives each process a contiguous range of
    rows, so a process reading its part of an on-disk matrix reads one slice of it.
    """
    procs = shard_processes(mesh)
    g = len(np.unique(procs))
    if g == 1 or len(procs) % g:
        return 1
    runs = procs.reshape(g, -1)
    return g if np.all(runs == runs[:, :1]) and len(np.unique(runs[:, 0])) == g else 1


def group_ranges(weights: np.ndarray, n_groups: int) -> np.ndarray:
    """int64 [n_groups + 1] cut points of contiguous row ranges, balanced in weight and rows.

    Each range gets about 1 / n_groups of the total of (weight share + row share), so
    neither the work nor the table slots of one process run far above the others.
    """
    w = np.asarray(weights, np.float64)
    n = w.shape[0]
    score = w / max(w.sum(), 1e-300) + 1.0 / max(n, 1)
    cum = np.concatenate([[0.0], np.cumsum(score)])
    targets = cum[-1] * np.arange(1, n_groups) / n_groups
    cuts = np.searchsorted(cum, targets, side="left")
    return np.concatenate([[0], cuts, [n]]).astype(np.int64)


def balanced_layout(weights: np.ndarray, n_shards: int, slack: float = 0.0, n_groups: int = 1) -> RowLayout:
    """Assigns rows to shards so the total weight per shard is balanced.

    Greedy longest-processing-time: rows heaviest first, each to the currently
    lightest shard that still has room, shards holding at most
    ``ceil(n / P * (1 + slack))`` rows.  With the default ``slack=0`` the table
    shards are equal and the weight is still balanced: a shard that took a hub
    gets no rows until the others catch up, then fills its quota with the light
    tail (cnr-2000 at P=8: max / mean entries 1.0000).  The heaviest
    ``_LPT_HEAD`` rows go one by one through a heap; the light tail is dealt
    vectorised, each shard receiving its remaining quota spread evenly over the
    tail's weight range, so the tail's contribution to imbalance is about one tail row.

    Args:
      weights: [n] non-negative work per row (stored entries; out + in links when tied).
      n_shards: P >= 1.
      slack: extra rows a shard may hold, as a fraction of n / P.
      n_groups: G processes owning P / G consecutive shards each: rows are first cut into
        G contiguous ranges (:func:`group_ranges`), then balanced within each range over
        that process's shards, so each process owns one contiguous slice of the rows.
    """
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    if slack < 0:
        raise ValueError(f"slack must be >= 0, got {slack}")
    if n_groups < 1 or n_shards % n_groups:
        raise ValueError(f"n_groups must divide n_shards={n_shards}, got {n_groups}")
    w = np.asarray(weights, dtype=np.float64)
    n = int(w.shape[0])
    if n_groups == 1:
        return _layout(_lpt_shards(w, n_shards, slack), n_shards)
    per = n_shards // n_groups
    cuts = group_ranges(w, n_groups)
    shard_of = np.empty(n, dtype=np.int64)
    for g in range(n_groups):
        shard_of[cuts[g] : cuts[g + 1]] = g * per + _lpt_shards(w[cuts[g] : cuts[g + 1]], per, slack)
    return _layout(shard_of, n_shards)


def _lpt_shards(w: np.ndarray, P: int, slack: float) -> np.ndarray:
    """int64 [n] shard of each row: the longest-processing-time assignment above."""
    n = int(w.shape[0])
    cap = max(1, int(np.ceil(n / P * (1 + slack))))
    order = np.argsort(-w, kind="stable")  # heaviest first, ties by external id
    shard_of = np.empty(n, dtype=np.int64)
    load = np.zeros(P, dtype=np.float64)
    count = np.zeros(P, dtype=np.int64)
    head = order[: min(n, _LPT_HEAD)]
    heap = [(0.0, s) for s in range(P)]
    for u in head.tolist():
        ld, s = heapq.heappop(heap)  # the lightest shard with room
        shard_of[u] = s
        count[s] += 1
        load[s] = ld + w[u]
        if count[s] < cap:
            heapq.heappush(heap, (load[s], s))
    tail = order[len(head) :]
    if len(tail):
        quota = cap - count
        excess = int(quota.sum()) - len(tail)
        for s in np.argsort(-load, kind="stable"):  # the heaviest shards take fewer tail rows
            cut = min(int(quota[s]), excess)
            quota[s] -= cut
            excess -= cut
        # Shard s's k-th tail row sits at "time" (k + 0.5) / quota[s]: sorting those times
        # interleaves every shard's rows evenly through the (descending) tail.
        labels = np.repeat(np.arange(P), quota)
        k = np.arange(len(labels)) - np.repeat(np.cumsum(quota) - quota, quota)
        times = (k + 0.5) / np.repeat(np.maximum(quota, 1), quota)
        shard_of[tail] = labels[np.lexsort((load[labels], times))]
    return shard_of


def _layout(shard_of: np.ndarray, P: int) -> RowLayout:
    """The RowLayout of a row -> shard assignment (slots of a shard in external order)."""
    n = int(shard_of.shape[0])
    counts = np.bincount(shard_of, minlength=P)
    n_local = max(1, int(counts.max(initial=0)))
    # Slots: rows of each shard in increasing external order.
    ext_sorted = np.lexsort((np.arange(n), shard_of))  # by shard, then external id
    starts = np.cumsum(counts) - counts
    local = np.arange(n) - np.repeat(starts, counts)
    position = np.empty(n, dtype=np.int64)
    position[ext_sorted] = shard_of[ext_sorted] * n_local + local
    external = np.full(P * n_local, -1, dtype=np.int64)
    external[position] = np.arange(n)
    return RowLayout(n=n, n_shards=P, n_local=n_local, position=position, external=external)


def contiguous_layout(n: int, n_shards: int) -> RowLayout:
    """Rows in external order, split into equal contiguous ranges (no balancing)."""
    n_local = max(1, -(-n // n_shards))
    position = np.arange(n, dtype=np.int64)
    external = np.full(n_shards * n_local, -1, dtype=np.int64)
    external[:n] = position
    return RowLayout(n=n, n_shards=n_shards, n_local=n_local, position=position, external=external)


def shard_processes(mesh: Any) -> np.ndarray:
    """int [P] the process index of each shard's device, in mesh order."""
    return np.array([d.process_index for d in mesh.devices.reshape(-1)])


def engine_layouts(rc: np.ndarray, cc: np.ndarray, mesh: Any, tied: bool) -> tuple[RowLayout, RowLayout]:
    """Row and column layouts of a ShardedEngine on ``mesh`` (global row / column entry counts).

    In a multi-process run each process owns one contiguous range of rows (and of
    columns), balanced within it over its devices: see ``balanced_layout(n_groups=)``.
    """
    P, groups = int(mesh.devices.size), process_groups(mesh)
    if tied:
        lay = balanced_layout(rc + cc, P, n_groups=groups)
        return lay, lay
    return balanced_layout(rc, P, n_groups=groups), balanced_layout(cc, P, n_groups=groups)
