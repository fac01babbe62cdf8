"""Sharding vocabulary: the mesh, its axis name, every PartitionSpec, and row ownership.

Tables are sharded by rows over a 1-D mesh of *all* devices of *all* processes.
Row ``u`` of a table (its external index) lives in slot ``position[u]`` of the
device-side table, which is laid out as ``n_shards`` contiguous blocks of
``n_local`` slots::

    device table [n_shards * n_local, d], PartitionSpec(SHARD, None)
    shard s holds slots s * n_local .. (s + 1) * n_local - 1
    slot -> external row: ``external[slot]`` (-1 for a padding slot, kept at zero)

Rows are assigned to shards so stored entries per shard are balanced (web graphs
are heavily skewed, see :func:`balanced_layout`); inside a shard, rows keep increasing external order, so
local order agrees with external order (top-k tie breaks rely on this).

Nothing else in alsx spells an axis name or builds a PartitionSpec.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from alsx.data.layout import RowLayout, balanced_layout, contiguous_layout, group_ranges, process_groups  # noqa: F401 -- row ownership lives in the data layer; re-exported here

SHARD = "shard"
"""The one mesh axis: devices that each own a slice of every table's rows."""

TABLE = P(SHARD, None)
"""[rows, d] tables: rows split over SHARD, the embedding dimension whole."""

STACKED = P(SHARD)
"""Per-device host data stacked on a leading [n_shards, ...] axis (packed batches, plans)."""

REPLICATED = P()
"""Small arrays every device holds whole (Gramians, query batches)."""


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh named (SHARD,) over ``devices`` (default: every device of every process)."""
    devs = np.asarray(jax.devices() if devices is None else list(devices), dtype=object)
    return Mesh(devs.reshape(-1), (SHARD,))


def n_shards(mesh: Mesh) -> int:
    return int(mesh.shape[SHARD])


def table_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, TABLE)


def stacked_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, STACKED)


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, REPLICATED)


def local_shards(mesh: Mesh) -> list[int]:
    """Shard indices whose device belongs to this process, in mesh order."""
    me = jax.process_index()
    return [s for s, d in enumerate(mesh.devices.reshape(-1)) if d.process_index == me]
