"""Host access to a sharded engine's tables without gathering one (the rows a process asks
for, the Gramian, the tables written to disk by every process its own rows) and the
conversions between external row order and the engine's layout (by all-to-all permutation).

Each is a collective across processes: every process calls it (with its own ids).
``ShardedEngine`` (``alsx.core.sharded``) takes these methods from :class:`HostAccess`.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from alsx.collectives import allgather_bytes, route
from alsx.core.exchange import permutation_plan, permute_local
from alsx.core.sharding import STACKED, TABLE, RowLayout, n_shards, stacked_sharding, table_sharding
from alsx.core.state import ALSState
from alsx.data.partitioned import pack_fields, unpack_fields

# As in alsx.core.sharded: the bodies reduce only with explicit collectives.
_CHECK_VMA = False


class HostAccess:
    """Mixin of ShardedEngine (needs ``hp``, ``tied``, ``mesh``, ``row_layout``, ``col_layout``,
    ``n_rows``, ``n_cols``)."""

    def _local_slots(self, state: ALSState, side: str) -> tuple[RowLayout, dict[int, np.ndarray]]:
        """(layout, {shard: float32 [n_local, d] rows this process holds}) of table ``side``."""
        table, layout = (state.w, self.row_layout) if side == "w" or self.tied else (state.h, self.col_layout)
        n_local = layout.n_local
        return layout, {
            int(sh.index[0].start or 0) // n_local: np.asarray(sh.data, np.float32) for sh in table.addressable_shards
        }

    def host_rows(self, state: ALSState, side: str, ids: np.ndarray) -> np.ndarray:
        """float32 [len(ids), d] rows ``ids`` (external) of table ``side`` ("w" or "h") on this host.

        Each process asks the owners for its own ids; owners send back only those rows (two
        all-to-alls of the requests and the rows), so nothing near a whole table moves.
        """
        layout, mine = self._local_slots(state, side)
        d = self.hp.dim
        ids = np.asarray(ids, np.int64)
        shard, slot = layout.owner(ids)
        proc_of = np.array([dev.process_index for dev in self.mesh.devices.reshape(-1)])
        me = np.full(len(ids), jax.process_index(), np.int32)
        asked = unpack_fields(
            route(
                pack_fields([np.arange(len(ids), dtype=np.int32), shard.astype(np.int32), slot.astype(np.int32), me]),
                proc_of[shard],
            ),
            [np.int32, np.int32, np.int32, np.int32],
        )
        pos, sh, sl, who = asked
        rows = np.zeros((len(pos), d), np.float32)
        for s in np.unique(sh):
            pick = sh == s
            rows[pick] = mine[int(s)][sl[pick]]
        back = route(np.concatenate([pos[:, None], rows.view(np.int32)], axis=1), who)
        out = np.zeros((len(ids), d), np.float32)
        out[back[:, 0]] = np.ascontiguousarray(back[:, 1:]).view(np.float32)
        return out

    def host_gramian(self, state: ALSState, side: str) -> np.ndarray:
        """float64 [d, d] Gramian of table ``side`` summed over every shard of every process."""
        _, mine = self._local_slots(state, side)
        d = self.hp.dim
        g = sum((x.astype(np.float64).T @ x.astype(np.float64) for x in mine.values()), np.zeros((d, d)))
        return np.sum([x.reshape(d, d) for x in allgather_bytes(g.reshape(-1))], axis=0)

    def write_tables(self, state: ALSState, out) -> None:
        """Writes row_embeddings.npy / col_embeddings.npy (float32, external order) into ``out``,
        each process its own rows through a memory map: no process holds a whole table.

        ``out`` must be one folder that every process sees (as for checkpoints).
        """
        out = Path(out)
        names = (("w", "row_embeddings.npy", self.n_rows), ("h", "col_embeddings.npy", self.n_cols))
        if jax.process_index() == 0:
            out.mkdir(parents=True, exist_ok=True)
            for _, name, n in names:
                np.lib.format.open_memmap(out / name, mode="w+", dtype=np.float32, shape=(n, self.hp.dim)).flush()
        multihost_utils.sync_global_devices("alsx-write-tables-created")
        for side, name, _ in names:
            layout, mine = self._local_slots(state, side)
            mm = np.lib.format.open_memmap(out / name, mode="r+")
            for s, rows in mine.items():
                ext = layout.shard_rows(s)
                mm[ext[ext >= 0]] = rows[ext >= 0]
            mm.flush()
            del mm
        multihost_utils.sync_global_devices("alsx-write-tables-done")

    # ---- layout conversions -----------------------------------------------------------------

    def place(self, table: np.ndarray, layout: RowLayout) -> jax.Array:
        """Host table [n, d] in external order (the same on every process) -> sharded internal table."""
        d = table.shape[1]

        def piece(index):
            ext = layout.external[index[0]]  # the slots this device holds
            out = np.zeros((len(ext), d), dtype=table.dtype)
            out[ext >= 0] = table[ext[ext >= 0]]
            return out

        return jax.make_array_from_callback((layout.n_slots, d), table_sharding(self.mesh), piece)

    def to_external(self, state: ALSState) -> tuple[jax.Array, jax.Array]:
        """Device tables in external row order, sharded by rows: [n_rows', d], [n_cols', d].

        n' is n rounded up to a multiple of P (zero rows at the end: jax shardings must
        divide evenly).  These are what checkpoints store, so any mesh can restore them.
        """
        w = self._permute(state.w, self._padded(self.row_layout.position))
        h = w if self.tied else self._permute(state.h, self._padded(self.col_layout.position))
        return w, h

    def place_external(self, w: jax.Array, h: jax.Array, epoch: int) -> ALSState:
        """Tables whose first n rows are in external order (any sharding, any number of trailing
        rows) -> state in this engine's layout (see :meth:`Engine.from_external`)."""
        wi = self._permute(w, self.row_layout.external)
        hi = wi if self.tied else self._permute(h, self.col_layout.external)
        return ALSState(w=wi, h=hi, epoch=int(epoch), tied=self.tied)

    def _padded(self, index: np.ndarray) -> np.ndarray:
        """``index`` followed by -1 up to a multiple of P."""
        P = n_shards(self.mesh)
        out = np.full(-(-len(index) // P) * P, -1, np.int64)
        out[: len(index)] = index
        return out

    def _permute(self, table: jax.Array, index: np.ndarray) -> jax.Array:
        return permute_rows(table, index, self.mesh)


def gather_host(x: jax.Array) -> np.ndarray:
    """The whole global array on this host."""
    if x.is_fully_addressable:
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def permute_rows(table: jax.Array, index: np.ndarray, mesh: Mesh) -> jax.Array:
    """[len(index), d] rows table[index] (zeros where index < 0), both sharded by rows over ``mesh``.

    An all-to-all exchange (:func:`alsx.core.exchange.permute_local`): each device
    sends and receives only its own rows, so saving or restoring a checkpoint never
    holds a whole table on one device.  ``len(index)`` and the table's rows are
    multiples of the shard count.
    """
    fn, args = permute_program(table, index, mesh)
    return fn(*args)


def permute_program(table: jax.Array, index: np.ndarray, mesh: Mesh):
    """(jitted program, its arguments) of :func:`permute_rows` (tests read its collectives)."""
    request, positions = permutation_plan(np.asarray(index, np.int64), table.shape[0], n_shards(mesh))
    stacked = stacked_sharding(mesh)
    put = lambda a: jax.make_array_from_callback(a.shape, stacked, lambda i: a[i])  # noqa: E731
    body = lambda t, r, q: permute_local(t, r[0], q[0])  # noqa: E731
    fn = jax.jit(
        jax.shard_map(body, mesh=mesh, in_specs=(TABLE, STACKED, STACKED), out_specs=TABLE, check_vma=_CHECK_VMA)
    )
    return fn, (table, put(request), put(positions))
