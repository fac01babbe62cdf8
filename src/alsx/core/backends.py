"""Which engine trains a model here: the backend choice and the engine factory."""

from __future__ import annotations

import jax

from alsx.compile_cache import enable_compile_cache
from alsx.config import BACKENDS, HParams, Packing
from alsx.core.cpu import CpuEngine, cpu_backend_reason
from alsx.core.engine import Engine, LocalEngine
from alsx.core.sharded import ShardedEngine
from alsx.core.sharding import local_shards, make_mesh
from alsx.core.streaming import StreamingEngine
from alsx.data.layout import engine_layouts
from alsx.data.matrix import CSR
from alsx.data.shard_packing import local_part

__all__ = ["BACKENDS", "make_engine", "resolve_backend"]


def resolve_backend(backend: str, hp: HParams) -> str:
    """'cpu' or 'jax' for ``backend`` ('auto': the CPU kernel wherever it applies)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "jax":
        return "jax"
    why_not = cpu_backend_reason(hp)
    if backend == "cpu" and why_not is not None:
        raise ValueError(f"backend='cpu' cannot train this model: {why_not}; use backend='jax'")
    return "jax" if why_not else "cpu"


def make_engine(
    rows: CSR,
    cols: CSR,
    hp: HParams,
    packing: Packing = Packing(),
    tied: bool = False,
    backend: str = "auto",
    *,
    streaming: bool = False,
    chunk_entries: int | None = None,
) -> Engine:
    """The training engine for this machine and model.

    backend 'cpu' (what 'auto' picks on a CPU-only host, one process, CG or block on float32 tables):
    ``CpuEngine``, fused Numba kernels on all cores.  Otherwise (backend 'jax'): LocalEngine
    on one device (``StreamingEngine`` when ``streaming``: the CSRs stay on disk and are read
    in row ranges of ``chunk_entries`` nonzeros), or a ShardedEngine over every device of
    every process.

    In a multi-process run each process keeps only the rows its shards own (plus the
    global row lengths), so host memory per process shrinks with the process count;
    with memory-mapped CSRs it also reads only those rows.  With ``streaming``, 'auto' means 'jax'
    (the data stays out of core unless the CPU kernels are asked for).
    """
    if backend != "auto" or not streaming:
        backend = resolve_backend(backend, hp)
    if backend == "cpu":
        return CpuEngine(rows, cols, hp, packing, tied)
    enable_compile_cache()  # before the first compile: reruns on the same shapes load the programs
    if jax.device_count() == 1:
        if streaming:
            return StreamingEngine(
                rows, cols, hp, packing, tied=tied, **({"chunk_entries": chunk_entries} if chunk_entries else {})
            )
        return LocalEngine(rows, cols, hp, packing, tied)
    mesh = make_mesh()
    if jax.process_count() == 1:
        return ShardedEngine(rows, cols, hp, packing, tied=tied, mesh=mesh)
    # Each process owns a contiguous range of rows and of columns: from memory-mapped CSRs
    # (a WebGraph dataset) it reads just those slices.
    rc, cc = rows.lengths(), cols.lengths()
    mine = local_shards(mesh)
    row_layout, col_layout = engine_layouts(rc, cc, mesh, tied)
    my_rows = local_part(rows, row_layout, mine)
    my_cols = local_part(cols, col_layout, mine)
    return ShardedEngine(my_rows, my_cols, hp, packing, tied=tied, mesh=mesh, row_counts=rc, col_counts=cc)
