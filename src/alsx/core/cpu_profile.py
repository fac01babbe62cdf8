"""Per-phase timings of a CPU engine's half-step (``alsx train --profile`` on the CPU backend)."""

from __future__ import annotations

import numpy as np

from alsx.core.cpu_block import block_flops, block_rows
from alsx.core.cpu_host import eigenbasis
from alsx.core.cpu_kernels import cg_rows
from alsx.core.state import ALSState
from alsx.core.timing import best_seconds, sgemm_rate


def profile_half_step(engine, state: ALSState, side: str = "rows", repeat: int = 2) -> dict[str, float]:
    """Best-of-``repeat`` seconds per phase of one half-step of ``engine`` at ``state``.

    Phases: gramian (+ eigen-decomposition), rotate (both tables), residual (the kernel
    with 0 CG steps: gather, b - A x0, write) and cg_steps (the rest of the kernel).
    solve_gflops counts the kernel's multiply-adds over the stored entries (2 passes of
    2d FLOPs per entry, for the residual and each step) per second of kernel time.
    For the 'block' solver, residual is the kernel with 0 sweeps (the scores H_u x0, which
    training runs only every RESCORE_EVERY epochs: see ``CpuEngine._handoffs``) and cg_steps
    the kernel given those residuals (gather and sweeps); FLOPs as ``cpu_block.block_flops``
    less the score pass.
    """
    hp = engine.hp
    i = 0 if side == "rows" else 1
    csr, lam, starts, threads, solve = engine.kernel_args(side)
    w, h = (state.w, state.h) if i == 0 else (state.h, state.w)
    out = np.empty_like(w)

    def best(fn) -> float:
        return best_seconds(fn, repeat)

    with threads.blas():
        gramian = best(lambda: eigenbasis(h, threads))
        q32 = eigenbasis(h, threads)[1].astype(np.float32)
        rotate = best(lambda: (threads.matmul(h, q32), threads.matmul(w, q32)))
    shared = np.ones(hp.dim, np.float32) * hp.unobserved_weight

    bs, sweeps = solve["block_size"], solve["sweeps"]
    if bs:
        residual = best(lambda: block_rows(csr, starts, w, h, shared, lam, bs, 0, out))
        handed = np.full(csr.nnz, 0.5, np.float32)  # their values do not change the work
        steps = best(lambda: block_rows(csr, starts, w, h, shared, lam, bs, sweeps, out, residuals_in=handed))
        flops, seconds = block_flops(csr.nnz, len(lam), hp.dim, bs, sweeps) - 2.0 * csr.nnz * hp.dim, steps
    else:
        residual = best(lambda: cg_rows(csr.indptr, csr.indices, csr.values, starts, w, h, shared, lam, 0, out))
        seconds = best(
            lambda: cg_rows(csr.indptr, csr.indices, csr.values, starts, w, h, shared, lam, hp.cg_steps, out)
        )
        steps = max(seconds - residual, 0.0)
        flops = csr.nnz * 2 * (2 * hp.dim) * (hp.cg_steps + 1)
    result = {"gramian": gramian, "rotate": rotate, "residual": residual, "cg_steps": steps}
    result["total"] = gramian + rotate + steps + (0.0 if bs else residual)  # a handed-on block half-step
    result["solve_gflops"] = flops / seconds / 1e9
    result["sgemm_gflops"] = sgemm_rate() / 1e9
    return result
