"""``alsx demo``: train and evaluate on a built-in synthetic link graph."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from alsx.cli import common


def add_parser(sub) -> None:
    """``alsx demo``: a built-in synthetic graph, end to end."""
    d = sub.add_parser("demo", help="train and evaluate on a built-in synthetic link graph")
    common.add_model_args(d, dim=64, epochs=10)
    d.add_argument("--nodes", type=int, default=40_000, help="nodes of the graph (default %(default)s)")
    d.add_argument("--edges", type=int, default=400_000, help="links of the graph (default %(default)s)")
    d.add_argument("--out", default=None, help="output folder (default: ./alsx-demo-TIMESTAMP)")
    common.add_cpu_devices(d, default=1)
    d.set_defaults(func=cmd_demo)


def cmd_demo(a: argparse.Namespace) -> int:
    import numpy as np

    from alsx.data.split import heldout_rows_split
    from alsx.data.synthetic import community_graph
    from alsx.eval.protocol import evaluate

    t0 = time.perf_counter()
    data = community_graph(n_nodes=a.nodes, n_edges=a.edges, seed=a.seed)
    split = heldout_rows_split(data, row_fraction=0.1, history_fraction=0.8, seed=a.seed)
    print(
        f"synthetic community graph: {data.shape[0]:,} nodes, {data.nnz:,} links; "
        f"{len(split.heldout_rows):,} rows held out (80% of each folded in, 20% to find)"
    )
    model = common.model_from_args(a)
    model.fit(split.train, split=split, eval_every=1, eval_ks=(20, 50))
    results = evaluate(model.row_embeddings_, model.col_embeddings_, split, model.hparams, (20, 50))
    out = Path(a.out) if a.out else Path.cwd() / f"alsx-demo-{time.strftime('%Y%m%d-%H%M%S')}"
    model.save(out)
    common.fold_in_heldout(model, split)
    np.save(out / "row_embeddings.npy", model.row_embeddings_)
    (out / "metrics.json").write_text(json.dumps(results, indent=2))
    png = common.plot_history(
        model.history_, out / "training.png", f"alsx demo: d={a.dim}, {data.nnz:,} links, held-out rows"
    )
    print()
    print(common.format_table(results, (20, 50)))
    h = model.history_
    print(
        f"\nloss {h[0]['loss']['total']:.1f} -> {h[-1]['loss']['total']:.1f}; "
        f"{np.mean([r['seconds'] for r in h[1:]] or [h[0]['seconds']]):.2f} s/epoch after compile; "
        f"total {time.perf_counter() - t0:.1f}s"
    )
    print(f"embeddings, config, history and {png.name} written to: {out}")
    return 0
