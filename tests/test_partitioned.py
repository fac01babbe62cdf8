"""Reading one input file in parts (one per process) and assembling it across processes."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alsx.data import ingest as ig
from alsx.data import split as sp
from alsx.data import text_blocks, validate
from alsx.data.ingest import IngestError, load_interactions
from alsx.data.matrix import Interactions

HERE = os.path.dirname(__file__)


def _read(path, part=None, **kw):
    refs = {
        "row": kw.pop("row", None),
        "col": kw.pop("col", None),
        "value": kw.pop("value", None),
        "timestamp": None,
        "is_test": None,
    }
    return ig.read_source(
        path, fmt=kw.pop("fmt", None), refs=refs, sep=None, header="infer", ids="auto", square=False, part=part, **kw
    )


def _as_list(c):
    return c.to_pylist() if isinstance(c, pa.ChunkedArray) else np.asarray(c).tolist()


def _write_csv(path, n=500, seed=0, header=True):
    rng = np.random.default_rng(seed)
    lines = ["user,item,rating"] if header else []
    for _ in range(n):
        lines.append(f"u{rng.integers(0, 60)},i{rng.integers(0, 40)},{rng.integers(1, 6)}")
        if rng.random() < 0.05:
            lines.append("")  # blank lines are skipped, and must not shift a part boundary
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("n_parts", [1, 2, 3, 5, 17])
def test_text_parts_cover_every_line_once_and_read_only_their_bytes(tmp_path, monkeypatch, n_parts):
    path = tmp_path / "x.csv"
    _write_csv(path)
    whole = _read(str(path), value="rating")
    spans = []
    real = text_blocks.blocks

    def recording(p, start, block_bytes, end=None):
        for off, block in real(p, start, block_bytes, end):
            spans.append((off, off + len(block)))
            yield off, block

    monkeypatch.setattr(text_blocks, "blocks", recording)
    rows, cols, vals, ranges = [], [], [], []
    for i in range(n_parts):
        spans.clear()
        raw = _read(str(path), part=(i, n_parts), value="rating")
        rows += _as_list(raw.rows)
        cols += _as_list(raw.cols)
        vals += _as_list(raw.values)
        lo, hi = ig.part_byte_range(str(path), len("user,item,rating\n"), i, n_parts)
        ranges.append((lo, hi))
        assert all(lo <= a and b <= hi for a, b in spans), (spans, lo, hi)  # nothing outside its part
    assert rows == _as_list(whole.rows) and cols == _as_list(whole.cols) and vals == _as_list(whole.values)
    assert ranges[0][0] == len("user,item,rating\n") and ranges[-1][1] == path.stat().st_size
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))  # contiguous, no line twice


def test_edge_list_parts_with_comments(tmp_path):
    path = tmp_path / "g.edges"
    rng = np.random.default_rng(1)
    text = ["# a comment", "% another"]
    for k in range(300):
        text.append(f"{rng.integers(0, 50)}\t {rng.integers(0, 50)}")
        if k % 37 == 0:
            text.append("# mid-file comment")
    path.write_text("\n".join(text) + "\n")
    whole = _read(str(path))
    got = [(_as_list(r.rows), _as_list(r.cols)) for r in (_read(str(path), part=(i, 4)) for i in range(4))]
    assert sum((g[0] for g in got), []) == _as_list(whole.rows)
    assert sum((g[1] for g in got), []) == _as_list(whole.cols)


def test_an_error_in_a_later_part_names_its_file_line(tmp_path):
    path = tmp_path / "bad.csv"
    lines = ["user,item,rating"] + [f"u{k},i{k % 7},1" for k in range(400)]
    lines[351] = "u350,i0,oops"  # physical line 352
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(IngestError, match=r"bad\.csv: line 352 \('u350,i0,oops'\).*rating"):
        for i in range(3):
            _read(str(path), part=(i, 3), value="rating")
    # and a bad value found only after parsing (negative) is named by its line too
    lines[351] = "u350,i0,-2"
    path.write_text("\n".join(lines) + "\n")
    raw = _read(str(path), part=(2, 3), value="rating")
    with pytest.raises(IngestError, match=r"line 352 .*negative value -2"):
        validate.checked_values(raw, allow_negative=False)


def test_compressed_text_is_refused_with_the_reason(tmp_path):
    path = tmp_path / "x.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write("a,b\n1,2\n")
    with pytest.raises(IngestError, match="compressed text file cannot be split"):
        _read(str(path), part=(0, 2))


def test_parquet_parts_are_runs_of_row_groups(tmp_path):
    rng = np.random.default_rng(2)
    n = 1000
    table = pa.table({"u": [f"u{k}" for k in rng.integers(0, 90, n)], "i": rng.integers(0, 70, n), "w": rng.random(n)})
    path = tmp_path / "x.parquet"
    pq.write_table(table, path, row_group_size=130)  # 8 row groups
    whole = _read(str(path), value="w")
    parts = [_read(str(path), part=(i, 3), value="w") for i in range(3)]
    assert sum((_as_list(p.rows) for p in parts), []) == _as_list(whole.rows)
    assert np.array_equal(np.concatenate([p.values for p in parts]), whole.values)
    # positions inside a part name the file's row number
    assert parts[2].locate([0])[0] == f"row {len(parts[0].rows) + len(parts[1].rows)}"


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_parts_are_slices(tmp_path, compressed):
    rng = np.random.default_rng(3)
    n = 777
    arrays = {
        "rows": rng.integers(0, 50, n).astype(np.int32),
        "cols": rng.integers(0, 30, n).astype(np.int32),
        "values": rng.random(n).astype(np.float32),
        "shape": np.array([50, 30], np.int64),
    }
    path = tmp_path / "x.npz"
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    parts = [_read(str(path), part=(i, 4)) for i in range(4)]
    for key, role in (("rows", "rows"), ("cols", "cols"), ("values", "values")):
        assert np.array_equal(np.concatenate([getattr(p, role) for p in parts]), arrays[key])
    assert all(p.shape == (50, 30) for p in parts)
    assert parts[3].locate([0])[0] == f"index {len(parts[0].rows) + len(parts[1].rows) + len(parts[2].rows)}"


def _interactions(seed=4, n_rows=80, n_cols=50, nnz=1500, timestamps=False):
    rng = np.random.default_rng(seed)
    keys = np.unique(rng.integers(0, n_rows * n_cols, nnz))
    r, c = (keys // n_cols).astype(np.int32), (keys % n_cols).astype(np.int32)
    ts = rng.integers(0, 20, len(r)).astype(np.int64) if timestamps else None  # many ties
    return Interactions(rows=r, cols=c, values=np.ones(len(r), np.float32), shape=(n_rows, n_cols), timestamps=ts)


@pytest.mark.parametrize("kind", ["random", "heldout-rows", "last"])
def test_splits_of_row_ranges_are_the_split_of_the_whole(kind):
    """Each process splits its own rows; together they must be the one-process split."""
    x = _interactions(timestamps=True)
    lengths = np.bincount(x.rows, minlength=x.shape[0])
    whole = sp.by_name(kind, x, seed=5)
    cuts = [0, 23, 24, 61, x.shape[0]]
    pieces = [
        sp.by_name(kind, x.select((x.rows >= a) & (x.rows < b)), seed=5, row_lengths=lengths)
        for a, b in zip(cuts, cuts[1:])
    ]

    def pairs(parts):
        return sorted(
            zip(np.concatenate([p.rows for p in parts]).tolist(), np.concatenate([p.cols for p in parts]).tolist())
        )

    for attr in ("train", "test") + (("foldin",) if kind == "heldout-rows" else ()):
        assert pairs([getattr(p, attr) for p in pieces]) == pairs([getattr(whole, attr)]), attr
    assert pairs([whole.test]) and pairs([whole.train])
    if kind == "heldout-rows":
        assert all(np.array_equal(p.heldout_rows, whole.heldout_rows) for p in pieces)


def test_split_depends_on_the_seed():
    x = _interactions()
    a, b = sp.random_holdout(x, seed=0), sp.random_holdout(x, seed=1)
    assert a.test.nnz == b.test.nnz  # per-row counts do not depend on the seed
    assert not (np.array_equal(a.test.rows, b.test.rows) and np.array_equal(a.test.cols, b.test.cols))


# ---------------------------------------------------------------------------- 2 processes


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.path.join(HERE, "..", "src"), HERE, env.get("PYTHONPATH", "")])
    env.pop("XLA_FLAGS", None)
    return env


def _two_processes(argv: list[str], timeout: float = 300) -> list[str]:
    from test_distributed import _finish, _free_port

    port = _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "alsx.cli"]
            + argv
            + [
                "--coordinator",
                f"127.0.0.1:{port}",
                "--num-processes",
                "2",
                "--process-id",
                str(i),
                "--cpu-devices",
                "2",
            ],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    results = _finish(procs, timeout)
    for code, err in results:
        assert code == 0, err[-4000:]
    return [err for _, err in results]


CASES = {  # name -> (file writer, extra flags)
    "csv-heldout-rows": ("csv", ["--split", "heldout-rows", "--duplicates", "sum"]),
    "parquet-random-first": ("parquet", ["--split", "random", "--duplicates", "first", "--eval-every", "1"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_reading_parts_train_like_one_reading_all(tmp_path, case):
    """2 processes x 2 devices, each parsing half of one file (string ids, duplicates that
    straddle the parts), give the one-process model: vocabularies, merged entries, split,
    embeddings, metrics and train.npz."""
    from alsx.cli import main

    kind, extra = CASES[case]
    rng = np.random.default_rng(6)
    n = 3000
    users = [f"user-{k:03d}" for k in rng.integers(0, 150, n)]
    items = [f"item {k}" for k in rng.integers(0, 90, n)]
    ratings = rng.integers(1, 6, n)
    if kind == "csv":
        data = tmp_path / "ratings.csv"
        data.write_text("u,i,r\n" + "".join(f"{a},{b},{c}\n" for a, b, c in zip(users, items, ratings)))
    else:
        data = tmp_path / "ratings.parquet"
        pq.write_table(pa.table({"u": users, "i": items, "r": ratings.astype(np.float64)}), data, row_group_size=400)
    common = [
        str(data),
        "--row",
        "u",
        "--col",
        "i",
        "--value",
        "r",
        "--alpha",
        "0.5",
        "--dim",
        "8",
        "--epochs",
        "2",
        "--solver",
        "cholesky",
        "--reg",
        "0.05",
        "--unobserved-weight",
        "0.1",
        "--backend",
        "jax",
    ] + extra
    whole, summary = load_interactions(str(data), row="u", col="i", value="r")
    assert summary.merged_duplicates > 0
    assert main(["train", "--out", str(tmp_path / "one")] + common) == 0
    errs = _two_processes(["train", "--out", str(tmp_path / "mp")] + common)
    assert "each parsed its part" in errs[0]
    one, mp = tmp_path / "one", tmp_path / "mp"
    for name in ("row_embeddings.npy", "col_embeddings.npy"):
        a, b = np.load(mp / name), np.load(one / name)
        assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max(), name
    for name in ("row_vocab.npz", "col_vocab.npz", "train.npz"):
        with np.load(mp / name) as a, np.load(one / name) as b:
            assert sorted(a.files) == sorted(b.files)
            for k in a.files:
                assert np.array_equal(a[k], b[k]), (name, k)
    ing = [json.loads((d / "config.json").read_text())["ingest"] for d in (one, mp)]
    assert {k: v for k, v in ing[0].items() if k != "source"} == {k: v for k, v in ing[1].items() if k != "source"}
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (one, mp))
    for part in ("model", "popularity"):
        assert m1[part]["n_eval_rows"] == m2[part]["n_eval_rows"] > 0
        for k in ("recall@20", "ndcg@20", "recall@50"):
            assert abs(m1[part][k] - m2[part][k]) <= 1e-6, (part, k)
    if "--eval-every" in extra:  # the mid-run evaluation is a collective too
        # the split-trained run's history (history.json is the refit's on all input, which has no split)
        h1, h2 = (json.loads((d / "split_history.json").read_text()) for d in (one, mp))
        assert abs(h1[0]["metrics"]["recall@20"] - h2[0]["metrics"]["recall@20"]) <= 1e-6


SHARDED_EVAL = r"""
import json, sys
import numpy as np
from alsx.data.matrix import Interactions
from alsx.data.split import by_name
from alsx.eval.protocol import evaluate
from alsx.model import ALS
rng = np.random.default_rng(8)
keys = np.unique(rng.integers(0, 120 * 70, 2500))
x = Interactions(rows=(keys // 70).astype(np.int32), cols=(keys % 70).astype(np.int32),
                 values=np.ones(len(keys), np.float32), shape=(120, 70))
out = {}
for kind in ("random", "heldout-rows"):
    split = by_name(kind, x, seed=1)
    m = ALS(dim=8, epochs=2, reg=0.05, unobserved_weight=0.1, backend="jax", progress=False)
    m.fit(split.train, split=split, eval_every=1)
    assert m.engine_name_ == "ShardedEngine" and m.eval_topk_ is not None
    sharded = evaluate(m.row_embeddings_, m.col_embeddings_, split, m.hparams, topk=m.eval_topk_)
    host = evaluate(m.row_embeddings_, m.col_embeddings_, split, m.hparams)
    out[kind] = [sharded, host, m.history_[-1]["metrics"]]
# Host access to the sharded tables without gathering them, against the gathered ones.
e, st = m.engine_, m.state_
w, h = e.to_numpy(st)
ids = np.array([5, 0, 69, 5, 33], np.int64)
assert np.array_equal(e.host_rows(st, "h", ids), h[ids]) and np.array_equal(e.host_rows(st, "w", ids), w[ids])
assert np.allclose(e.host_gramian(st, "h"), h.astype(np.float64).T @ h, rtol=1e-6, atol=1e-9)
e.write_tables(st, sys.argv[1])
assert np.array_equal(np.load(sys.argv[1] + "/row_embeddings.npy"), w)
assert np.array_equal(np.load(sys.argv[1] + "/col_embeddings.npy"), h)
print(json.dumps(out))
"""


def test_evaluation_on_several_devices_scores_column_shards_like_one_device(tmp_path):
    """With a ShardedEngine, evaluation ranks against the column shards in place; the
    metrics equal ranking against the whole host table.  Rows, the Gramian and the
    written tables read from the shards equal the gathered tables."""
    env = _env()
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=3"
    res = subprocess.run(
        [sys.executable, "-c", SHARDED_EVAL, str(tmp_path)], env=env, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr[-3000:]
    for kind, (sharded, host, during) in json.loads(res.stdout.strip().splitlines()[-1]).items():
        assert sharded["model"]["n_eval_rows"] > 0
        for k in ("recall@20", "ndcg@20", "recall@50", "map@50"):
            assert abs(sharded["model"][k] - host["model"][k]) <= 1e-9, (kind, k)
            assert abs(during[k] - host["model"][k]) <= 1e-9, (kind, k)


def test_sharded_scorer_equals_host_topk_with_exclusions():
    from alsx.data.matrix import coo_to_csr
    from alsx.eval.protocol import sharded_scorer
    from alsx.serve.sharded_topk import ShardedTable
    from alsx.serve.topk import topk_scores

    rng = np.random.default_rng(9)
    h = rng.normal(size=(53, 6)).astype(np.float32)
    h[10] = h[11]  # a tie
    q = rng.normal(size=(17, 6)).astype(np.float32)
    r, c = rng.integers(0, 17, 60), rng.integers(0, 53, 60)
    keys = np.unique(r * 53 + c)
    excl = coo_to_csr(keys // 53, keys % 53, np.ones(len(keys), np.float32), 17, 53)
    got = sharded_scorer(ShardedTable.from_numpy(h))(q, 20, excl)
    _, want = topk_scores(q, h, 20, exclude=excl)
    assert np.array_equal(got, want)


def test_fold_in_against_the_rows_it_reads_and_the_whole_gramian():
    """fold_in(h[used], renumbered history, gram=G, n_cols=m) is the solve against all of h."""
    from alsx.config import HParams
    from alsx.data.matrix import CSR, coo_to_csr
    from alsx.serve.foldin import fold_in

    rng = np.random.default_rng(10)
    m, d = 40, 5
    h = rng.normal(size=(m, d)).astype(np.float32)
    r, c = rng.integers(0, 6, 25), rng.integers(0, m, 25)
    keys = np.unique(r * m + c)
    hist = coo_to_csr(keys // m, keys % m, (1 + rng.random(len(keys))).astype(np.float32), 6, m)
    hp = HParams(dim=d, reg=0.05, unobserved_weight=0.1, nu=1.0)
    used, inv = np.unique(hist.indices, return_inverse=True)
    local = CSR(indptr=hist.indptr, indices=inv.astype(np.int32), values=hist.values, n_cols=len(used))
    got = fold_in(h[used], local, hp, gram=h.astype(np.float64).T @ h, n_cols=m)
    want = fold_in(h, hist, hp)
    assert np.allclose(got, want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(fold_in(h[used], local, hp), want, rtol=1e-3)  # the Gramian matters


def test_bad_line_in_one_part_is_named_and_the_other_process_stops(tmp_path):
    """The process whose part holds a bad value names the file, line and value and exits at
    once; the other stops with a clear error instead of hanging."""
    from alsx.distributed import EXIT_PEER_LOST
    from test_distributed import _finish, _free_port

    lines = ["user,item,rating"] + [f"u{k % 50},i{k % 31},{1 + k % 4}" for k in range(2000)]
    lines[1700] = "u7,i3,oops"  # physical line 1701, in the second half of the bytes
    data = tmp_path / "bad.csv"
    data.write_text("\n".join(lines) + "\n")
    port = _free_port()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "alsx.cli",
                "train",
                str(data),
                "--out",
                str(tmp_path / "o"),
                "--value",
                "rating",
                "--alpha",
                "1",
                "--dim",
                "4",
                "--epochs",
                "1",
                "--backend",
                "jax",
                "--coordinator",
                f"127.0.0.1:{port}",
                "--num-processes",
                "2",
                "--process-id",
                str(i),
                "--heartbeat-timeout",
                "10",
            ],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    (code0, err0), (code1, err1) = _finish(procs, timeout=240)
    assert code1 == 1, err1[-3000:]
    assert "bad.csv: line 1701 ('u7,i3,oops'): value 'oops' in column 'rating' is not a number" in err1
    # Stopped by alsx's own check (a failed collective) or, first, by JAX's heartbeat monitor.
    assert (code0 == EXIT_PEER_LOST and "another process failed" in err0) or (
        code0 == -6 and "another task died" in err0
    ), (code0, err0[-3000:])
