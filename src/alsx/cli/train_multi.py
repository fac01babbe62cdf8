"""``alsx train FILE`` over several processes: each parses only its part of FILE and trains the
rows its devices own (``ShardedEngine``), through ``ALS.fit`` (the one training path)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from alsx.cli.common import checkpointer_from_args, ingest_options, model_from_args, resolve_auto_weights, split_options
from alsx.cli.outputs import write_outputs


def train_partitioned(a: argparse.Namespace, topo) -> int:
    """``alsx train FILE`` over several processes: each parses only its part of FILE.

    Entries reach their owners by all-to-all (``alsx.data.partitioned``), each process splits
    and evaluates its own rows, and the ShardedEngine trains on the rows and columns each
    process's devices own.  No table is gathered: evaluation fetches only the rows it reads
    and ranks on the column shards, each process writes its own rows of the tables
    (``OUT`` must be one folder all processes see), and process 0 gathers only the training
    rows for ``train.npz`` and the folded-in held-out rows.
    """
    import numpy as np

    from alsx.collectives import route
    from alsx.core.sharded import ShardedEngine
    from alsx.core.sharding import make_mesh
    from alsx.data.partitioned import engine_inputs, gather_to_lead, load_partitioned, split_partitioned
    from alsx.eval.protocol import compact_rows, evaluate_across_processes
    from alsx.serve.foldin import fold_in_sharded
    from alsx.train import sharded_eval_topk

    lead = topo.process_index == 0
    t = time.perf_counter()
    part = load_partitioned(a.data, **ingest_options(a))
    mine = part.local
    if lead:
        print(
            f"ingest: {part.summary} ({topo.process_count} processes, each parsed its part; "
            f"{time.perf_counter() - t:.1f}s)",
            file=sys.stderr,
        )
    split = split_partitioned(part, a.split, **split_options(a))
    train = mine if split is None else split.train
    mesh = make_mesh()
    rows, cols, rc, cc = engine_inputs(train, a.alpha, mesh, a.tied)
    # 'auto' weights from the whole training matrix (each process holds only its rows): the same on every process
    resolve_auto_weights(a, int(rc.sum()), train.shape)
    model = model_from_args(a, progress=lead)
    engine: dict = {}

    def factory(_rows, _cols, hp, packing, tied):
        engine["e"] = ShardedEngine(rows, cols, hp, packing, tied=tied, mesh=mesh, row_counts=rc, col_counts=cc)
        return engine["e"]

    def queries(st):
        e = engine["e"]
        if split.foldin is not None:  # held-out rows: folded in against the sharded column table
            return lambda rows, history: fold_in_sharded(e, st, history, model.hparams)
        return lambda rows, history: e.host_rows(st, "w", rows)

    def scores(st) -> dict:  # a collective: no table is gathered, each device ranks its column shard
        return evaluate_across_processes(
            None,
            None,
            split,
            model.hparams,
            tuple(a.ks),
            alpha=a.alpha,
            col_counts=cc,
            topk=sharded_eval_topk(engine["e"], st),
            queries=queries(st),
        )

    def callback(record: dict, st) -> None:
        if split is not None and a.eval_every and st.epoch % a.eval_every == 0 and st.epoch != model.epochs:
            record["metrics"] = scores(st)["model"]

    model.engine_factory = factory
    t = time.perf_counter()
    model.fit(
        train,
        callback=callback,
        checkpointer=checkpointer_from_args(a),
        step_timeout_s=topo.options.step_timeout_s,
        gather_tables=False,
    )
    seconds = time.perf_counter() - t
    st, e = model.state_, engine["e"]
    results = scores(st) if split is not None else None
    if results is not None:
        model.history_[-1]["metrics"] = results["model"]
    split_model, refit_seconds = None, 0.0
    if split is not None and a.refit:  # as one process: the saved tables train on all input entries
        if lead:
            print(
                "refit: training again on all input entries with the same settings, the model to save "
                "(--no-refit keeps the split-trained one)",
                file=sys.stderr,
            )
        all_rows, all_cols, all_rc, all_cc = engine_inputs(mine, a.alpha, mesh, a.tied)

        def refit_factory(_rows, _cols, hp, packing, tied):
            engine["e"] = ShardedEngine(
                all_rows, all_cols, hp, packing, tied=tied, mesh=mesh, row_counts=all_rc, col_counts=all_cc
            )
            return engine["e"]

        split_model, model = model, model_from_args(a, progress=lead)
        model.engine_factory = refit_factory
        t = time.perf_counter()
        model.fit(mine, step_timeout_s=topo.options.step_timeout_s, gather_tables=False)
        refit_seconds = time.perf_counter() - t
        st, e = model.state_, engine["e"]
    e.write_tables(st, a.out)  # every process writes its own rows
    folded = None
    if split_model is None and split is not None and split.foldin is not None:  # each folds in its held-out rows
        held = np.unique(split.foldin.rows).astype(np.int32)
        emb = fold_in_sharded(e, st, compact_rows(split.foldin, held, a.alpha), model.hparams)
        got = route(np.concatenate([held[:, None], emb.view(np.int32)], axis=1), np.zeros(len(held), np.int64))
        folded = got[:, 0], np.ascontiguousarray(got[:, 1:]).view(np.float32)  # process 0 writes them
    everything = gather_to_lead(mine)  # train.npz: `alsx recommend` excludes all a row had in the input
    kept = gather_to_lead(train) if split is not None and split_model is None else everything  # trained.npz
    if not lead:
        return 0
    if folded is not None:
        mm = np.lib.format.open_memmap(Path(a.out) / "row_embeddings.npy", mode="r+")
        mm[folded[0]] = folded[1]
        mm.flush()
        del mm
    if a.profile:
        print("note: --profile times one device and is skipped in a multi-process run", file=sys.stderr)
        a.profile = False
    write_outputs(
        a,
        model,
        split,
        part.summary,
        results,
        seconds,
        everything,
        tables=False,
        seen=everything,
        split_model=split_model,
        trained=kept.csr(a.alpha),
        refit_seconds=refit_seconds,
    )
    return 0
