"""Out-of-core training: stream row ranges of (memory-mapped) CSRs through the step.

``LocalEngine`` packs both sides of the matrix once and keeps every block in memory,
which needs several bytes per nonzero on top of the CSR itself.  ``StreamingEngine``
keeps only the tables on the device; each half-step walks the rows in contiguous
ranges of about ``chunk_entries`` nonzeros, packs one range (on a background thread,
while the previous range is being solved) and feeds its blocks to the same per-bucket
solvers as ``alsx.core.step``.

Shapes are kept fixed so each width compiles once, not once per chunk:

* the bucket widths are chosen once per side from the global row-length histogram
  (:func:`alsx.data.packing.side_widths`), exactly as :func:`pack` would;
* rows per batch depend on the width only;
* a bucket's batches go to the device in calls of ``batches_per_call`` batches; the
  last call of a bucket is padded with empty rows (row id = ``n_rows``, dropped on
  write) up to the next power of two, so at most ``1 + log2(batches_per_call)``
  programs exist per width;
* long rows (longer than ``max_width``) are whole inside a range; their sub-row chunk
  count and slot count are padded to powers of two.

Every row's normal equations are the same as in ``LocalEngine`` (rows are solved
independently), so results agree to float32 rounding.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import jax
import numpy as np

from alsx.compile_cache import cpu_jit
from alsx.config import HParams, Packing
from alsx.core.engine import DeviceEngine, PackStats, check_shapes
from alsx.core.state import ALSState
from alsx.core.step import observed_loss, prologue, solve_block, solve_long, take_rows
from alsx.data.matrix import CSR, row_ranges
from alsx.data.packing import side_widths

#: Default nonzeros per streamed row range (~130 MB of int32 ids + float32 confidences packed).
DEFAULT_CHUNK_ENTRIES = 1 << 24


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, int(n - 1).bit_length())


# Our own jitted wrappers (not step.block_update/long_update) only to donate ``out``:
# without donation every call copies the whole n x d output table, and a half-step
# makes hundreds of calls.  The maths is step.solve_block / step.solve_long unchanged.
@functools.partial(cpu_jit, static_argnames=("solver", "cg_steps", "block_size"), donate_argnums=(0,))
def _block_call(out, w, h, gram, block, lam, alpha0, solver, cg_steps, block_size=0):
    """``out`` with the rows of one [K, S, width] call re-solved (row id n_rows = empty slot)."""
    x = solve_block(w, h, gram, block, lam, alpha0, solver, cg_steps, take_rows, block_size)
    return out.at[block[2].reshape(-1)].set(x.reshape(-1, w.shape[1]).astype(out.dtype), mode="drop")


@functools.partial(cpu_jit, static_argnames=("solver", "cg_steps", "block_size"), donate_argnums=(0,))
def _long_call(out, w, h, gram, long, lam, alpha0, solver, cg_steps, block_size=0):
    """``out`` with the long rows of one call re-solved (padded slots have row id n_rows)."""
    x = solve_long(w, h, gram, long, lam, alpha0, solver, cg_steps, take_rows, block_size)
    return out.at[long[3]].set(x.astype(out.dtype), mode="drop")


@dataclasses.dataclass(frozen=True)
class SideLayout:
    """What is fixed for one side across all chunks and epochs.

    Attributes:
      widths: int64 [n_widths] global bucket widths.
      per_batch: int64 [n_widths] rows per batch of each width.
      long_per_chunk: sub-rows per long-row chunk.
      ranges: [(r0, r1)] contiguous row ranges of about ``chunk_entries`` nonzeros.
      counts: float32 [n_rows] stored entries per row.
      n_rows, n_cols, nnz: the side's shape.
    """

    widths: np.ndarray
    per_batch: np.ndarray
    long_per_chunk: int
    ranges: list[tuple[int, int]]
    counts: np.ndarray
    n_rows: int
    n_cols: int
    nnz: int


@dataclasses.dataclass
class PackedChunk:
    """One row range, ready to send: lists of fixed-shape call arguments.

    Attributes:
      blocks: tuples (cols int32 [K, S, W], conf float32 [K, S, W], rows int32 [K, S]).
      longs: tuples (cols [C, P, max_width], conf [C, P, max_width], seg int32 [C, P], rows int32 [L]).
      nnz: stored entries of the range; padded: entries including padding.
    """

    blocks: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
    longs: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
    nnz: int
    padded: int


def side_layout(csr: CSR, dim: int, cfg: Packing, dense_rows: bool, chunk_entries: int) -> SideLayout:
    """The global widths, batch sizes and row ranges of one side (reads only ``indptr``)."""
    indptr = np.asarray(csr.indptr)
    lengths = np.diff(indptr)
    # Same width choice as alsx.data.packing.pack, on the global histogram.
    widths = side_widths(lengths, cfg)
    entries = cfg.entries_for(dim)
    row_cap = max(1, cfg.max_dense_bytes // (4 * dim * dim)) if dense_rows else None
    per_batch = np.array([max(1, entries // int(wd)) for wd in widths], dtype=np.int64)
    if row_cap is not None:
        per_batch = np.minimum(per_batch, row_cap)
    return SideLayout(
        widths=widths,
        per_batch=per_batch,
        long_per_chunk=max(1, entries // cfg.max_width),
        ranges=row_ranges(indptr, chunk_entries),
        counts=lengths.astype(np.float32),
        n_rows=csr.n_rows,
        n_cols=csr.n_cols,
        nnz=int(indptr[-1]),
    )


def _gather(
    indices: np.ndarray, values: np.ndarray, starts: np.ndarray, lengths: np.ndarray, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """[n, width] column ids and confidences of entries starts[j] .. starts[j]+lengths[j] (local), 0 padded."""
    offs = np.arange(width, dtype=np.int64)
    mask = offs[None, :] < lengths[:, None]
    pos = np.where(mask, starts[:, None] + offs[None, :], 0)
    cols = np.where(mask, indices[pos], 0).astype(np.int32)
    conf = np.where(mask, values[pos], 0).astype(np.float32)
    return cols, conf


def _pad_rows(a: np.ndarray, n: int, fill) -> np.ndarray:
    if len(a) == n:
        return a
    return np.concatenate([a, np.full((n - len(a),) + a.shape[1:], fill, dtype=a.dtype)])


def pack_range(
    csr: CSR, r0: int, r1: int, layout: SideLayout, cfg: Packing, batches_per_call: np.ndarray
) -> PackedChunk:
    """Packs rows [r0, r1) of ``csr`` with the side's fixed widths into fixed-shape calls.

    Reads only ``indptr[r0:r1+1]`` and that range's indices/values from the (mapped) CSR.

    Args:
      batches_per_call: int [n_widths] batches K per full call of each width.
    """
    n_rows = layout.n_rows
    ip = np.asarray(csr.indptr[r0 : r1 + 1], dtype=np.int64)
    base = int(ip[0])
    indices = np.asarray(csr.indices[base : int(ip[-1])])
    values = np.asarray(csr.values[base : int(ip[-1])], dtype=np.float32)
    starts = ip[:-1] - base
    lengths = np.diff(ip)
    short = (lengths > 0) & (lengths <= cfg.max_width)
    bucket = np.searchsorted(layout.widths, lengths, side="left")
    blocks, padded = [], 0
    for b, width in enumerate(layout.widths):
        width, s = int(width), int(layout.per_batch[b])
        local = np.flatnonzero(short & (bucket == b))
        if len(local) == 0:
            continue
        cols, conf = _gather(indices, values, starts[local], lengths[local], width)
        ids = (local + r0).astype(np.int32)
        n_batches = -(-len(local) // s)
        k_full = max(1, int(batches_per_call[b]))
        for c0 in range(0, n_batches, k_full):
            k = min(k_full, n_batches - c0)
            k = k if k == k_full else min(k_full, _pow2_at_least(k))  # few shapes per width
            lo, hi = c0 * s, min((c0 + k) * s, len(local))
            total = k * s
            blocks.append(
                (
                    _pad_rows(cols[lo:hi], total, 0).reshape(k, s, width),
                    _pad_rows(conf[lo:hi], total, 0).reshape(k, s, width),
                    _pad_rows(ids[lo:hi], total, n_rows).reshape(k, s),
                )
            )
            padded += total * width

    longs = []
    long_local = np.flatnonzero(lengths > cfg.max_width)
    if len(long_local):
        width, p = cfg.max_width, layout.long_per_chunk
        llen = lengths[long_local]
        n_sub = -(-llen // width)
        seg = np.repeat(np.arange(len(long_local), dtype=np.int32), n_sub)
        first = np.cumsum(n_sub) - n_sub
        j = np.arange(len(seg)) - np.repeat(first, n_sub)
        sub_starts = starts[long_local][seg] + j * width
        sub_len = np.minimum(width, llen[seg] - j * width)
        cols, conf = _gather(indices, values, sub_starts, sub_len, width)
        n_chunks = _pow2_at_least(-(-len(seg) // p))
        n_slots = _pow2_at_least(len(long_local))
        total = n_chunks * p
        longs.append(
            (
                _pad_rows(cols, total, 0).reshape(n_chunks, p, width),
                _pad_rows(conf, total, 0).reshape(n_chunks, p, width),
                _pad_rows(seg, total, 0).reshape(n_chunks, p),  # padded sub-rows: conf 0, add nothing
                _pad_rows((long_local + r0).astype(np.int32), n_slots, n_rows),
            )
        )
        padded += total * width
    return PackedChunk(blocks=blocks, longs=longs, nnz=int(lengths.sum()), padded=padded)


class StreamingEngine(DeviceEngine):
    """iALS on the default device with the sparse data streamed from (memory-mapped) CSRs.

    Host memory: the tables (and one output table) plus at most two packed row ranges,
    plus whatever pages of the mapped CSRs the kernel keeps cached.

    Args:
      rows: CSR [n_rows, n_cols] of the training matrix; arrays may be ``np.memmap``.
      cols: CSR [n_cols, n_rows], its transpose.
      hp: hyper-parameters.
      packing: block layout (widths are chosen from each side's global histogram).
      tied: one table for rows and columns (square matrices only).
      chunk_entries: nonzeros per streamed row range.
      call_entries: target padded entries per device call (sets batches per call).
      prefetch: pack the next range on a background thread while the device works.
      cache: keep packed ranges in memory when a side fits in one range (small graphs).
    """

    kind = "streaming"
    host_views = True

    def __init__(
        self,
        rows: CSR,
        cols: CSR,
        hp: HParams,
        packing: Packing = Packing(),
        tied: bool = False,
        chunk_entries: int = DEFAULT_CHUNK_ENTRIES,
        call_entries: int = 1 << 20,
        prefetch: bool = True,
        cache: bool = True,
    ):
        check_shapes(rows, cols, tied)
        if rows.nnz != cols.nnz:
            raise ValueError("cols must be the transpose of rows")
        t = time.perf_counter()
        self.hp, self.tied, self.packing = hp, tied, packing
        self.n_rows, self.n_cols = rows.n_rows, rows.n_cols
        self.chunk_entries, self.call_entries = int(chunk_entries), int(call_entries)
        self.prefetch, self.cache = prefetch, cache
        dense = hp.solver == "cholesky"
        self._csr = {"rows": rows, "cols": cols}
        self._layout = {k: side_layout(m, hp.dim, packing, dense, self.chunk_entries) for k, m in self._csr.items()}
        self._counts = {k: jax.device_put(v.counts) for k, v in self._layout.items()}
        self._cached: dict[str, list[PackedChunk]] = {}
        self._fill = {"rows": float("nan"), "cols": float("nan")}
        self.stats = PackStats(float("nan"), float("nan"), time.perf_counter() - t)
        self.pack_seconds = 0.0  # cumulative time spent packing (overlapped with solving when prefetching)

    # ------------------------------------------------------------------ chunks
    def _pack(self, side: str, r0: int, r1: int) -> PackedChunk:
        t = time.perf_counter()
        layout = self._layout[side]
        # K per width: ~call_entries padded entries per call, the same for every chunk.
        k = np.maximum(1, self.call_entries // np.maximum(layout.per_batch * layout.widths, 1))
        chunk = pack_range(self._csr[side], r0, r1, layout, self.packing, k)
        self.pack_seconds += time.perf_counter() - t
        return chunk

    def chunks(self, side: str) -> Iterator[PackedChunk]:
        """The packed row ranges of ``side`` ('rows' or 'cols'), the next one packed in the background."""
        layout = self._layout[side]
        if side in self._cached:
            yield from self._cached[side]
            return
        ranges = layout.ranges
        keep = self.cache and len(ranges) == 1
        done: list[PackedChunk] = []
        if not self.prefetch or len(ranges) == 1:
            for r0, r1 in ranges:
                c = self._pack(side, r0, r1)
                done.append(c)
                yield c
        else:
            with ThreadPoolExecutor(1) as pool:
                nxt = pool.submit(self._pack, side, *ranges[0])
                for i in range(len(ranges)):
                    c = nxt.result()
                    if i + 1 < len(ranges):
                        nxt = pool.submit(self._pack, side, *ranges[i + 1])
                    yield c
                    del c  # drop our reference so at most two ranges are alive
        if keep:
            self._cached[side] = done
            self._fill[side] = done[0].nnz / max(done[0].padded, 1)

    # ------------------------------------------------------------------ the engine contract
    def describe(self) -> str:
        return f"{len(self._layout['rows'].ranges)} + {len(self._layout['cols'].ranges)} row ranges per epoch"

    def half_step(self, x: jax.Array, other: jax.Array, side: str) -> tuple[jax.Array, jax.Array]:
        """New [n, d] table for ``side``'s rows against the fixed ``other`` (as step.half_step)."""
        hp, w, h = self.hp, x, other
        gram, lam, out = prologue(w, h, self._counts[side], hp.reg, hp.unobserved_weight, hp.nu, h.shape[0])
        bs = hp.block_width("jax")
        nnz = padded = 0
        for chunk in self.chunks(side):
            for block in chunk.blocks:
                out = _block_call(out, w, h, gram, block, lam, hp.unobserved_weight, hp.solver, hp.cg_steps, bs)
            for long in chunk.longs:
                out = _long_call(out, w, h, gram, long, lam, hp.unobserved_weight, hp.solver, hp.cg_steps, bs)
            # Wait for this range before taking the next: bounds live ranges to this one plus
            # the one being packed in the background (async dispatch would otherwise run ahead).
            out.block_until_ready()
            nnz, padded = nnz + chunk.nnz, padded + chunk.padded
        self._fill[side] = nnz / max(padded, 1)
        self.stats = PackStats(self._fill["rows"], self._fill["cols"], self.stats.seconds)
        return out, other

    def epoch_record(self) -> dict:
        """Host-side packing seconds since the last record (overlapped with solving when prefetching)."""
        seconds, self.pack_seconds = self.pack_seconds, 0.0
        return {"pack_seconds": seconds}

    def counts(self, side: str) -> jax.Array:
        return self._counts[side]

    def observed(self, state: ALSState) -> float:
        """sum over stored entries of c_ui (<w_u, h_i> - 1)^2, streamed over the row side."""
        total = 0.0
        for chunk in self.chunks("rows"):
            for block in chunk.blocks:
                total += float(observed_loss(state.w, state.h, {"blocks": (block,), "long": None}))
            for long in chunk.longs:
                total += float(observed_loss(state.w, state.h, {"blocks": (), "long": long}))
        return total
