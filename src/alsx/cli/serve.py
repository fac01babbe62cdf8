"""``alsx recommend``: top-k unseen columns per row of a saved model (one JSON line per row)."""

from __future__ import annotations

import argparse
import json


def add_parser(sub) -> None:
    """``alsx recommend DIR ROW [ROW ...] -k N``: top-k unseen columns per row."""
    r = sub.add_parser("recommend", help="top-k unseen columns for rows")
    r.add_argument("model", help="folder written by 'alsx train'")
    r.add_argument("rows", nargs="+", help="row ids (original ids when the model has a vocabulary)")
    r.add_argument("-k", type=int, default=10)
    r.add_argument("--include-seen", action="store_true")
    r.set_defaults(func=cmd_recommend)


def cmd_recommend(a: argparse.Namespace) -> int:
    from alsx.errors import UsageError
    from alsx.model import ALS
    from alsx.serve.ids import row_indices

    if a.k < 1:
        raise UsageError(f"-k must be >= 1, got {a.k}")
    model = ALS.load(a.model)
    rows = row_indices(a.rows, model.row_vocab_, model.row_embeddings_.shape[0], a.model)
    ids, scores = model.recommend(rows, k=a.k, exclude_seen=not a.include_seen)
    for r, row_ids, row_scores in zip(a.rows, ids, scores):
        keep = row_ids >= 0
        items = row_ids[keep]
        if model.col_vocab_ is not None:
            items = model.col_vocab_.decode(items)
        recs = [{"id": (i.item() if hasattr(i, "item") else i), "score": round(float(s), 6)}
                for i, s in zip(items, row_scores[keep])]
        print(json.dumps({"row": r, "recommendations": recs}))
    return 0
