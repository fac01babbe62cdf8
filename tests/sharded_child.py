"""Child process for the sharding tests (device counts must be fixed before jax is imported).

Usage: python tests/sharded_child.py '<json config>'

Config keys: mode ("compare" | "train" | "mp" | "stall" | "permute" | "evaluate"), devices, out, and per mode:
  compare: 3 epochs of LocalEngine per variant and of ShardedEngine per (variant, P) in
           ``runs``, the mesh being the first P of ``devices`` devices; saves all tables.
  train:   alsx.train.run_epochs to ``epochs`` with checkpoints in ``ckpt`` every ``every``.
  mp:      one of ``nproc`` processes (``pid``, ``port``); ``epochs`` epochs or, with
           ``forever``, until killed, writing ``progress`` after each epoch.
  stall:   a Watchdog with ``timeout`` seconds around a wait that never ends.
  permute: ``permute_rows`` of a random sharded table on ``devices`` devices; saves the
           result, the NumPy reference and the compiled program's collective bytes.
  evaluate: ``epochs`` epochs of LocalEngine and of ShardedEngine (all ``devices``) on a
           random split of a synthetic community graph, then evaluation on each: one
           device by ``topk_scores``, the mesh by ``sharded_scorer`` in batches of ``batch``
           rows (far more than 32 multi-device programs); saves tables, top-k and metrics.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

CFG: dict = {}  # set from argv in __main__, before jax is imported

N_ROWS, N_COLS = 70, 50


def problem(square: bool = False):
    """A small skewed matrix with long rows (> max_width 16), empty rows and columns."""
    from alsx.data.matrix import coo_to_csr

    rng = np.random.default_rng(7)
    n, m = (N_ROWS, N_ROWS) if square else (N_ROWS, N_COLS)
    p_row = rng.pareto(1.2, n) + 0.2
    p_col = rng.pareto(1.2, m) + 0.2
    dense = rng.random((n, m)) < np.clip(0.25 * np.outer(p_row, p_col) / np.mean(p_row) / np.mean(p_col), 0, 1)
    dense[2, :] = True  # a long row (m > 16 entries)
    dense[:, 3] = True  # a long column
    dense[5, :] = False  # an empty row
    dense[:, 7] = False  # an empty column
    r, c = np.nonzero(dense)
    v = (1.0 + rng.random(len(r))).astype(np.float32)
    return coo_to_csr(r, c, v, n, m), coo_to_csr(c, r, v, m, n)


def settings(solver: str = "cholesky", dtype: str = "float32"):
    from alsx.config import HParams, Packing

    hp = HParams(dim=8, reg=0.05, unobserved_weight=0.1, nu=1.0, solver=solver, cg_steps=3, dtype=dtype, block_size=4)
    return hp, Packing(min_width=4, max_width=16, batch_entries=64, n_buckets=3)  # few blocks: quick to compile


VARIANTS = {  # name -> (solver, dtype, tied)
    "f32": ("cholesky", "float32", False),
    "f32_tied": ("cholesky", "float32", True),
    "bf16": ("cholesky", "bfloat16", False),
    "cg": ("cg", "float32", False),
    "block": ("block", "float32", False),  # iALS++ sweeps over 2 blocks of 4 dimensions
}


def compare() -> None:
    """LocalEngine once per variant, ShardedEngine on meshes of the first P devices per run."""
    import jax

    from alsx.core.engine import LocalEngine
    from alsx.core.sharded import ShardedEngine
    from alsx.core.sharding import make_mesh

    out = {}
    for name in sorted({name for name, _ in CFG["runs"]}):
        solver, dtype, tied = VARIANTS[name]
        rows, cols = problem(square=tied)
        hp, pk = settings(solver, dtype)
        local = LocalEngine(rows, cols, hp, pk, tied=tied)
        a = local.init_state(0)
        out[f"{name}_init_local"] = local.to_numpy(a)[0]
        for _ in range(3):
            a = local.epoch(a)
        out[f"{name}_w_local"], out[f"{name}_h_local"] = local.to_numpy(a)
        out[f"{name}_loss_local"] = np.asarray(local.loss(a).total)
    for name, P in CFG["runs"]:
        solver, dtype, tied = VARIANTS[name]
        rows, cols = problem(square=tied)
        hp, pk = settings(solver, dtype)
        sharded = ShardedEngine(rows, cols, hp, pk, tied=tied, mesh=make_mesh(jax.devices()[:P]))
        b = sharded.init_state(0)
        out[f"{name}_{P}_init"] = sharded.to_numpy(b)[0]
        for _ in range(3):
            b = sharded.epoch(b)
        out[f"{name}_{P}_w"], out[f"{name}_{P}_h"] = sharded.to_numpy(b)
        out[f"{name}_{P}_loss"] = np.asarray(sharded.loss(b).total)
        out[f"{name}_{P}_imbalance"] = np.asarray(sharded.stats.imbalance())
    np.savez(CFG["out"], **out)


def train() -> None:
    from alsx.checkpoint import Checkpointer, CheckpointOptions
    from alsx.core.sharded import ShardedEngine
    from alsx.train import run_epochs as run

    rows, cols = problem()
    hp, pk = settings()
    engine = ShardedEngine(rows, cols, hp, pk)
    ck = None
    if CFG.get("ckpt"):
        ck = Checkpointer(CheckpointOptions(CFG["ckpt"], every_epochs=CFG.get("every", 1)))
    state = run(engine, CFG["epochs"], seed=0, checkpointer=ck)
    w, h = engine.to_numpy(state)
    np.savez(CFG["out"], w=w, h=h, epoch=state.epoch)


def multi_process() -> None:
    import jax

    from alsx.distributed import DistributedOptions, Watchdog, fail_fast, initialize

    initialize(
        DistributedOptions(
            coordinator=f"127.0.0.1:{CFG['port']}",
            num_processes=CFG["nproc"],
            process_id=CFG["pid"],
            heartbeat_timeout_s=CFG.get("heartbeat", 10),
            init_timeout_s=60,
        )
    )
    from alsx.core.engine import LocalEngine
    from alsx.core.sharded import ShardedEngine
    from alsx.core.sharding import local_shards, make_mesh, process_groups
    from alsx.data.layout import engine_layouts
    from alsx.data.shard_packing import local_part

    rows, cols = problem()
    hp, pk = settings()
    reference = None
    if CFG["pid"] == 0 and not CFG.get("forever"):
        # The one-device result, computed before any collective: after the last one the peer
        # waits at JAX's shutdown barrier, whose timeout a compile on a loaded machine can exceed.
        local = LocalEngine(rows, cols, hp, pk)
        a = local.init_state(0)
        for _ in range(CFG["epochs"]):
            a = local.epoch(a)
        reference = local.to_numpy(a)
    mesh = make_mesh()
    assert len(mesh.devices.reshape(-1)) == CFG["nproc"] * CFG["devices"]
    assert process_groups(mesh) == CFG["nproc"]
    # Each process keeps only the rows (and columns) its shards own: one contiguous range
    # of each, so it reads one slice of each CSR.
    rc, cc = rows.lengths(), cols.lengths()
    mine = local_shards(mesh)
    row_layout, col_layout = engine_layouts(rc, cc, mesh, tied=False)
    my_rows = local_part(rows, row_layout, mine)
    my_cols = local_part(cols, col_layout, mine)
    for part, full, lay in ((my_rows, rows, row_layout), (my_cols, cols, col_layout)):
        owned = np.flatnonzero(np.isin(lay.position // lay.n_local, mine))
        assert np.array_equal(owned, np.arange(owned[0], owned[-1] + 1))
        span = slice(full.indptr[owned[0]], full.indptr[owned[-1] + 1])
        assert np.array_equal(part.indices, full.indices[span])
    assert my_rows.nnz < rows.nnz or CFG["nproc"] == 1
    engine = ShardedEngine(my_rows, my_cols, hp, pk, mesh=mesh, row_counts=rc, col_counts=cc)
    state = engine.init_state(0)
    epochs = 10**9 if CFG.get("forever") else CFG["epochs"]
    with fail_fast("training"), Watchdog(CFG.get("step_timeout")) as wd:
        while state.epoch < epochs:
            state = engine.epoch(state)
            jax.block_until_ready(state.w)
            wd.beat()
            if CFG.get("progress"):
                with open(f"{CFG['progress']}.{CFG['pid']}", "w") as f:
                    f.write(str(state.epoch))
    if CFG.get("ckpt"):  # every process takes part in the save
        from alsx.checkpoint import Checkpointer, CheckpointOptions

        with Checkpointer(CheckpointOptions(CFG["ckpt"])) as ck:
            ck.save(engine, state)
    w, h = engine.to_numpy(state)
    # Top-k with the column table sharded over both processes' devices (history excluded).
    from alsx.serve.sharded_topk import sharded_topk

    scores, ids = sharded_topk(w, h, 7, exclude=rows, mesh=mesh)
    if CFG["pid"] == 0:
        lw, lh = reference
        np.savez(CFG["out"], w=w, h=h, w_local=lw, h_local=lh, topk_scores=scores, topk_ids=ids)


def permute() -> None:
    import jax

    from alsx.core.exchange import collective_bytes
    from alsx.core.sharded import permute_program, permute_rows
    from alsx.core.sharding import make_mesh, table_sharding

    mesh = make_mesh()
    P, d = len(jax.devices()), 8
    rng = np.random.default_rng(0)
    src = rng.normal(size=(P * 25, d)).astype(np.float32)
    index = rng.integers(0, P * 25, size=P * 30)  # [P * 30] rows (repeats allowed), some zero
    index[rng.choice(P * 30, size=7, replace=False)] = -1
    table = jax.device_put(src, table_sharding(mesh))
    got = np.asarray(permute_rows(table, index, mesh))
    ref = np.where((index >= 0)[:, None], src[np.maximum(index, 0)], 0.0)
    fn, args = permute_program(table, index, mesh)
    text = fn.lower(*args).compile().as_text()
    np.savez(
        CFG["out"],
        got=got,
        ref=ref,
        k=args[1].shape[-1],
        **{k.replace("-", "_"): v for k, v in collective_bytes(text).items()},
    )


def evaluate_many() -> None:
    import jax

    from alsx.core.engine import LocalEngine
    from alsx.core.sharded import ShardedEngine
    from alsx.data.split import random_holdout
    from alsx.data.synthetic import community_graph
    from alsx.eval.protocol import eval_rows, evaluate, sharded_scorer
    from alsx.serve.sharded_topk import ShardedTable, sharded_topk
    from alsx.serve.topk import topk_scores

    assert len(jax.devices()) == CFG["devices"]
    data = community_graph(n_nodes=CFG["nodes"], n_edges=CFG["edges"], n_communities=16, seed=3)
    split = random_holdout(data, fraction=0.2, seed=0)
    rows, cols = split.train.csr(), split.train.csc()
    hp, pk = settings()
    out = {}
    for name, engine in (("local", LocalEngine(rows, cols, hp, pk)), ("sharded", ShardedEngine(rows, cols, hp, pk))):
        st = engine.init_state(0)
        for _ in range(CFG["epochs"]):
            st = engine.epoch(st)
        w, h = engine.to_numpy(st)
        out[f"{name}_w"], out[f"{name}_h"] = w, h
        query = w[eval_rows(split)]
        if name == "local":
            topk, (s, i) = None, topk_scores(query, h, 20, exclude=rows, exclude_ids=eval_rows(split))
        else:
            table = ShardedTable.from_engine(engine, st)
            topk = sharded_scorer(table, batch_size=CFG["batch"])
            s, i = sharded_topk(query, table, 20, exclude=rows, exclude_ids=eval_rows(split), batch_size=CFG["batch"])
        out[f"{name}_scores"], out[f"{name}_ids"] = s, i
        metrics = evaluate(w, h, split, hp, (10, 20), topk=topk)["model"]
        out[f"{name}_metrics"] = np.array([metrics[k] for k in sorted(metrics)])
    out["n_queries"] = np.asarray(len(eval_rows(split)))
    np.savez(CFG["out"], **out)


def stall() -> None:
    import threading

    from alsx.distributed import Watchdog

    with Watchdog(CFG["timeout"]):
        threading.Event().wait()  # never set: a hung step


if __name__ == "__main__":
    CFG.update(json.loads(sys.argv[1]))
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={CFG.get('devices', 1)}"
    {
        "compare": compare,
        "train": train,
        "mp": multi_process,
        "stall": stall,
        "permute": permute,
        "evaluate": evaluate_many,
    }[CFG["mode"]]()
