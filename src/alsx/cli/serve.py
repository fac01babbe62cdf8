"""``alsx recommend``, ``alsx similar`` and ``alsx export``: serving a trained model folder.

    alsx recommend MODEL ROW [ROW ...] | --all | --rows-file F|-  [-k N] [--out recs.parquet|.csv] [--ann DIR]
    alsx similar MODEL ID [ID ...] [-k N] [--rows]
    alsx export MODEL --to DIR [--format parquet|npy] [--ann faiss]

Ids in and out are the original ids of the training input (dense indices for a model
trained with --ids index).  (Becomes ``alsx/cli/serve.py`` when cli.py turns into a package.)
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from alsx.errors import UsageError

if TYPE_CHECKING:
    import numpy as np

BATCH = 4096  # rows scored and written per step of recommend: bounds memory whatever the row count
K = 10

RECOMMEND_EPILOG = """\
output: without --out, one JSON object per line on stdout, in the order the rows were given:
  {"row": ROW_ID, "recommendations": [{"id": COLUMN_ID, "score": S}, ...]}
best first, at most k per row (fewer when fewer unseen columns are left); ids are the
training input's (numbers stay numbers).  --out FILE.parquet / FILE.csv writes the same
as a long table with one line per recommendation: row, rank (1 = best), id, score.
"""
SIMILAR_EPILOG = """\
output: one JSON object per line on stdout, in the order the ids were given:
  {"id": ID, "similar": [{"id": OTHER_ID, "score": COSINE}, ...]}
best first, the id itself left out.
"""


# ---------------------------------------------------------------------------- parser
def add_parser(subparsers) -> None:
    """Registers recommend, similar and export on ``alsx``'s sub-command parsers."""
    fmt = argparse.RawDescriptionHelpFormatter
    r = subparsers.add_parser(
        "recommend", help="top-k unseen columns for rows", epilog=RECOMMEND_EPILOG, formatter_class=fmt
    )
    r.add_argument("model", help="folder written by 'alsx train'")
    r.add_argument(
        "rows",
        nargs="*",
        metavar="ROW",
        help="row ids (original ids when the model has a vocabulary); '-' reads them from stdin",
    )
    src = r.add_mutually_exclusive_group()
    src.add_argument("--all", action="store_true", help="every row of the model, in index order")
    src.add_argument(
        "--rows-file",
        default=None,
        metavar="F",
        help="read row ids from file F, one per line ('-': stdin); blank lines are skipped",
    )
    r.add_argument("-k", type=int, default=K, help="recommendations per row (default %(default)s)")
    r.add_argument(
        "--include-seen",
        action="store_true",
        help="also recommend columns the row had in the training input (default: left out)",
    )
    r.add_argument(
        "--out",
        dest="out_file",
        default=None,
        metavar="FILE",
        help="write a .parquet or .csv table (row, rank, id, score) instead of JSON lines on stdout",
    )
    r.add_argument(
        "--batch-size",
        type=int,
        default=BATCH,
        help="rows scored and written per step; memory grows with it (default %(default)s)",
    )
    r.add_argument(
        "--ann",
        default=None,
        metavar="DIR",
        help="search the approximate index in DIR (from 'alsx export MODEL --ann faiss --to DIR') "
        "instead of scoring every column; seen columns are still left out (default: exact)",
    )
    r.add_argument(
        "--ef-search",
        type=int,
        default=None,
        help="with --ann: HNSW search beam, larger is more accurate and slower (default: the index's, from export)",
    )
    r.set_defaults(func=cmd_recommend)

    s = subparsers.add_parser(
        "similar", help="most similar columns (or rows) by cosine", epilog=SIMILAR_EPILOG, formatter_class=fmt
    )
    s.add_argument("model", help="folder written by 'alsx train'")
    s.add_argument("ids", nargs="+", metavar="ID", help="column ids (with --rows: row ids); '-' reads them from stdin")
    s.add_argument("-k", type=int, default=K, help="similar ids per id (default %(default)s)")
    s.add_argument("--rows", action="store_true", help="similar rows to rows (default: columns to columns)")
    s.set_defaults(func=cmd_similar)

    from alsx.serve.ann import AnnSettings
    from alsx.serve.export import FORMATS, LAYOUTS

    hnsw = AnnSettings()
    e = subparsers.add_parser(
        "export",
        help="write the embeddings as Parquet or npy, and an ANN index",
        description="Writes DIR/rows.parquet and DIR/cols.parquet: one line per id, columns "
        "'id' (the original id) and 'vector' (fixed-size list of d float32; "
        "--layout columns: v0..v{d-1}), in the model's index order, plus "
        "DIR/export.json; --format npy writes *_embeddings.npy and *_ids.npy "
        "instead.",
    )
    e.add_argument("model", help="folder written by 'alsx train'")
    e.add_argument("--to", required=True, metavar="DIR", help="output folder (created)")
    e.add_argument(
        "--format",
        dest="export_format",
        choices=FORMATS,
        default=FORMATS[0],
        help="parquet: id + vector columns (pyarrow, Spark, pandas); npy: NumPy arrays (default %(default)s)",
    )
    e.add_argument(
        "--layout",
        choices=LAYOUTS,
        default=LAYOUTS[0],
        help="parquet: the vector as one fixed-size list column 'vector', or one float32 column per "
        "dimension v0..v{d-1} (the same size and speed, benchmarks/results_export.md; "
        "default %(default)s)",
    )
    e.add_argument(
        "--ann",
        choices=["faiss"],
        default=None,
        help="also build an inner-product HNSW index of the column table in DIR, for "
        "'alsx recommend --ann DIR' (needs the ann extra: pip install 'alsx[ann]')",
    )
    e.add_argument("--hnsw-m", type=int, default=hnsw.m, help="with --ann: graph degree (default %(default)s)")
    e.add_argument(
        "--ef-construction", type=int, default=hnsw.ef_construction, help="with --ann: build beam (default %(default)s)"
    )
    e.add_argument(
        "--ef-search",
        type=int,
        default=hnsw.ef_search,
        help="with --ann: search beam stored with the index; larger is more accurate and slower, "
        "'recommend --ef-search' overrides it (default %(default)s)",
    )
    e.set_defaults(func=cmd_export)


# ---------------------------------------------------------------------------- ids
def _indices(given: list[str], model, columns: bool, where: str) -> np.ndarray:
    """int64 dense indices of ids typed by the user, the error naming rows or columns."""
    from alsx.serve.ids import row_indices

    vocab, n = (
        (model.col_vocab_, model.col_embeddings_.shape[0])
        if columns
        else (model.row_vocab_, model.row_embeddings_.shape[0])
    )
    try:
        return row_indices(given, vocab, n, where)
    except UsageError as e:
        if not columns:
            raise
        msg = str(e).replace("row id(s)", "column id(s)").replace("the rows of", "the columns of")
        raise UsageError(msg.replace("(its rows are", "(its columns are")) from None


def _lines(path: str) -> Iterator[str]:
    """Stripped non-blank lines of ``path`` ('-': stdin), read lazily."""
    f = sys.stdin if path == "-" else open(path, encoding="utf-8")  # noqa: SIM115 - closed below
    try:
        for line in f:
            if line.strip():
                yield line.strip()
    finally:
        if f is not sys.stdin:
            f.close()


def _row_batches(a: argparse.Namespace, model) -> tuple[Iterator[np.ndarray], int | None]:
    """(batches of int64 dense row indices in the asked order, total rows or None when unknown)."""
    n = model.row_embeddings_.shape[0]
    given = [r for r in a.rows if r != "-"]
    stdin = len(given) < len(a.rows)
    if sum([bool(given) or stdin, a.all, a.rows_file is not None]) != 1 or (given and stdin):
        raise UsageError("give the rows one way: row ids, '-' (ids on stdin), --all or --rows-file F")
    b = a.batch_size
    if a.all:
        import numpy as np

        return (np.arange(s, min(s + b, n), dtype=np.int64) for s in range(0, n, b)), n
    if given:
        rows = _indices(given, model, False, a.model)  # all checked before any output
        return (rows[s : s + b] for s in range(0, len(rows), b)), len(rows)
    path = "-" if stdin else a.rows_file
    if path != "-" and not Path(path).is_file():
        raise UsageError(f"--rows-file {path}: no such file")
    total = None if path == "-" else sum(1 for _ in _lines(path))
    lines = _lines(path)
    where = f"{a.model} (ids from {'stdin' if path == '-' else path})"
    chunks = iter(lambda: list(itertools.islice(lines, b)), [])
    return (_indices(chunk, model, False, where) for chunk in chunks), total


def _scorer(a: argparse.Namespace, model):
    """fn(rows int64 [b]) -> (ids int32 [b, k], scores float32 [b, k]), seen columns left out."""
    exclude = None if a.include_seen else model.train_
    if a.ann:
        from alsx.serve.ann import load_index, search_excluding

        index = load_index(a.ann, model.col_embeddings_, a.ef_search)

        def ann(rows):
            scores, ids = search_excluding(index, model.row_embeddings_[rows], a.k, exclude, rows)
            return ids, scores

        return ann
    import jax

    if len(jax.devices()) > 1:  # each device scores its shard of the columns
        from alsx.serve.sharded_topk import ShardedTable, sharded_topk

        table = ShardedTable.from_numpy(model.col_embeddings_)
        topk = sharded_topk
    else:
        from alsx.serve.topk import topk_scores

        table = jax.numpy.asarray(model.col_embeddings_, dtype=jax.numpy.float32)  # on the device once
        topk = topk_scores

    def exact(rows):
        scores, ids = topk(
            model.row_embeddings_[rows], table, a.k, exclude=exclude, exclude_ids=rows if exclude is not None else None
        )
        return ids, scores

    return exact


# ---------------------------------------------------------------------------- commands
def cmd_recommend(a: argparse.Namespace) -> int:
    if a.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {a.batch_size}")
    if a.ef_search is not None and not a.ann:
        raise UsageError("--ef-search is used only with --ann DIR")
    from tqdm import tqdm

    from alsx.cli.recommend_output import JsonLines, Table
    from alsx.model import ALS

    model = ALS.load(a.model)
    batches, total = _row_batches(a, model)
    writer = JsonLines(model) if a.out_file is None else Table(a.out_file, model)
    score = _scorer(a, model)
    ok = False
    try:
        with tqdm(total=total, unit=" rows", file=sys.stderr, desc="recommend", mininterval=1.0) as bar:
            for rows in batches:
                ids, scores = score(rows)
                writer.write(rows, ids, scores)
                bar.update(len(rows))
        ok = True
    finally:
        writer.close(ok)
    if a.out_file is not None:
        print(f"wrote {bar.n:,} rows x top-{a.k} to {a.out_file}", file=sys.stderr)
    return 0


def cmd_similar(a: argparse.Namespace) -> int:
    from alsx.cli.recommend_output import external
    from alsx.model import ALS
    from alsx.serve.topk import similar

    model = ALS.load(a.model)
    given = [i for i in a.ids if i != "-"] + (list(_lines("-")) if "-" in a.ids else [])
    columns = not a.rows
    idx = _indices(given, model, columns, a.model)
    table, vocab = (model.col_embeddings_, model.col_vocab_) if columns else (model.row_embeddings_, model.row_vocab_)
    scores, ids = similar(table, idx, a.k)
    for q, row_ids, row_scores in zip(external(vocab, idx), ids, scores):
        keep = row_ids >= 0
        sims = [
            {"id": i, "score": round(float(s), 6)} for i, s in zip(external(vocab, row_ids[keep]), row_scores[keep])
        ]
        print(json.dumps({"id": q, "similar": sims}))
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    import time

    from alsx.cli.guard import check_writable_folder

    for flag, v in (("--hnsw-m", a.hnsw_m), ("--ef-construction", a.ef_construction), ("--ef-search", a.ef_search)):
        if v < 1:
            raise UsageError(f"{flag} must be >= 1, got {v}")
    check_writable_folder(a.to, "--to")
    from alsx.model import ALS
    from alsx.serve.export import export_model

    model = ALS.load(a.model)
    info = export_model(model, a.to, a.export_format, a.layout)
    print(
        f"exported {info['n_rows']:,} rows and {info['n_cols']:,} columns (d={info['dim']}) as "
        f"{a.export_format} to {a.to} in {info['seconds']:.1f}s",
        file=sys.stderr,
    )
    if a.ann:
        from alsx.serve.ann import AnnSettings, build_index, save_index

        t = time.perf_counter()
        index = build_index(model.col_embeddings_, AnnSettings(a.hnsw_m, a.ef_construction, a.ef_search))
        save_index(index, a.to)
        print(
            f"built a faiss HNSW inner-product index of the {info['n_cols']:,} columns in "
            f"{time.perf_counter() - t:.1f}s; use it with: alsx recommend {a.model} --ann {a.to}",
            file=sys.stderr,
        )
    return 0
