"""Per-phase timings of a half-step: Gramian, gather, normal equations, solve, scatter.

A compiled half-step fuses its phases, so they cannot be timed from outside.  Here
each bucket is run as nested programs that stop after each phase (gather only; gather
and the normal-equation terms; the full solve; the scatter alone) and the phases are
the differences.  Every program is run once to compile, then timed.  The solve phase's
FLOP rate is set against a float32 matrix product measured in the same process.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from alsx.config import HParams
from alsx.core import cpu
from alsx.core import normal_eq as ne
from alsx.core.cpu_profile import profile_half_step as cpu_profile_half_step
from alsx.core.state import ALSState
from alsx.core.step import SideArrays, block_update, long_update, prologue, solve_rows, take_rows
from alsx.core.timing import sgemm_rate, timed
from alsx.data.packing import pack


@functools.partial(jax.jit, static_argnames=("stage",))
def _partial_block(w, h, gram, block, lam, alpha0, stage: str):
    """Runs one bucket up to ``stage`` ('gather' or 'normal') and returns a scalar to wait on."""
    cols, conf, rows = block

    def body(acc, batch):
        c, cf, r = batch
        hg = take_rows(h, c)
        if stage == "gather":
            return acc + jnp.sum(hg), None
        x0 = w.at[r].get(mode="fill", fill_value=0).astype(jnp.float32)
        reg = lam.at[r].get(mode="fill", fill_value=1.0)
        r0 = ne.block_residual(hg, cf, x0) - ne.add_shared(0.0, x0, gram, alpha0, reg)
        return acc + jnp.sum(r0), None

    acc, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), (cols, conf, rows))
    return acc


@functools.partial(jax.jit, donate_argnums=0)
def _scatter(out, rows, x):
    return out.at[rows.reshape(-1)].set(x.reshape(-1, out.shape[1]), mode="drop")


def solve_flops(entries: int, rows: int, dim: int, hp: HParams) -> float:
    """Floating-point operations of the solve per padded entry count (multiply-adds count 2)."""
    d = dim
    if hp.solver == "cg":  # residual + one matvec per step, 2 passes each; x G with each
        return entries * 2 * d * 2 * (hp.cg_steps + 1) + rows * (hp.cg_steps + 1) * 2 * d * d
    if hp.solver == "cholesky":  # A = sum h h^T, then factor and two triangular solves
        return entries * (2 * d * d + 2 * d) + rows * (d**3 / 3 + 2 * d * d)
    b = hp.block_width("jax")  # per block: scores, A_KK, gradient, b x b solve
    return entries * (d // b) * (2 * d + 2 * b * b + 2 * b) + rows * (d // b) * (b**3 / 3 + 2 * d * b)


def profile_half_step(w: jax.Array, h: jax.Array, side: SideArrays, hp: HParams) -> dict[str, float]:
    """Seconds per phase of one half-step (short-row buckets; long rows timed as one phase)."""
    alpha0, block_size = hp.unobserved_weight, hp.block_width("jax")
    gram, lam, _ = prologue(w, h, side["counts"], hp.reg, alpha0, hp.nu, h.shape[0])
    out = {
        "gramian": timed(prologue, w, h, side["counts"], hp.reg, alpha0, hp.nu, h.shape[0]),
        "gather": 0.0,
        "normal_equations": 0.0,
        "solve": 0.0,
        "scatter": 0.0,
        "long_rows": 0.0,
    }
    entries = rows = 0
    zeros = jnp.zeros_like(w)
    update_args = (lam, alpha0, hp.solver, hp.cg_steps, take_rows, block_size)  # after the block, both updates
    for block in side["blocks"]:
        g = timed(_partial_block, w, h, gram, block, lam, alpha0, "gather")
        n = timed(_partial_block, w, h, gram, block, lam, alpha0, "normal")
        full = timed(block_update, zeros, w, h, gram, block, *update_args, fresh_first=True)
        x = jnp.zeros(block[2].shape + (w.shape[1],), w.dtype)
        s = timed(_scatter, zeros, block[2], x, fresh_first=True)
        out["gather"] += g
        out["normal_equations"] += max(n - g, 0.0)
        out["solve"] += max(full - n - s, 0.0)
        out["scatter"] += s
        entries += block[0].size
        rows += block[2].size
    if side["long"] is not None:
        out["long_rows"] = timed(long_update, zeros, w, h, gram, side["long"], *update_args, fresh_first=True)
    out["total"] = sum(out.values())
    out["solve_gflops"] = (
        solve_flops(entries, rows, w.shape[1], hp) / max(out["solve"] + out["normal_equations"], 1e-9) / 1e9
    )
    out["sgemm_gflops"] = sgemm_rate() / 1e9
    return out


def profile_model(model, train) -> dict[str, dict[str, float]]:
    """``profile_half_step`` of the row and column half-steps at a fitted ``ALS``'s tables (one device;
    for a model trained by the CPU backend, that backend's phases).

    ``train``: the ``Interactions`` it was fitted on.
    """
    if getattr(model, "engine_name_", None) == "CpuEngine":
        eng = cpu.CpuEngine(train.csr(model.alpha), train.csc(model.alpha), model.hparams, tied=model.tied)
        st = ALSState(w=model.row_embeddings_, h=model.col_embeddings_, tied=model.tied)
        return {side: cpu_profile_half_step(eng, st, side) for side in ("rows", "cols")}
    dev = jax.devices()[0]
    w, h = jax.device_put(model.row_embeddings_, dev), jax.device_put(model.col_embeddings_, dev)
    dense = model.hparams.solver == "cholesky"
    result = {}
    for name, csr, a, b in (("rows", train.csr(model.alpha), w, h), ("cols", train.csc(model.alpha), h, w)):
        side = jax.device_put(pack(csr, model.hparams.dim, model.packing, dense_rows=dense).arrays(), dev)
        result[name] = profile_half_step(a, b, side, model.hparams)
    return result


__all__ = ["profile_half_step", "profile_model", "sgemm_rate", "solve_flops", "solve_rows"]
