"""Every ingest format against a NumPy / scipy reference, plus vocabularies and duplicates."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from alsx.data import text_blocks
from alsx.data.ingest import IngestSummary, load_interactions
from alsx.data.vocab import Vocab

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def dense(inter) -> np.ndarray:
    """The matrix as a dense float64 array (test sizes only)."""
    out = np.zeros(inter.shape)
    np.add.at(out, (inter.rows, inter.cols), inter.values)
    return out


def reference(rows, cols, values, shape) -> np.ndarray:
    """scipy's own duplicate-summing COO -> dense conversion."""
    return sp.coo_matrix((np.asarray(values, float), (rows, cols)), shape=shape).toarray()


def assert_canonical(inter) -> None:
    """int32 / float32, sorted by (row, col), no repeated pair."""
    assert inter.rows.dtype == np.int32 and inter.cols.dtype == np.int32
    assert inter.values.dtype == np.float32
    key = inter.rows.astype(np.int64) * inter.shape[1] + inter.cols
    assert np.all(np.diff(key) > 0)


@pytest.fixture
def coo():
    """A small random matrix with repeated pairs, in random order."""
    rng = np.random.default_rng(0)
    n = 300
    rows = rng.integers(0, 20, n).astype(np.int32)
    cols = rng.integers(0, 15, n).astype(np.int32)
    values = rng.integers(1, 6, n).astype(np.float32)
    return rows, cols, values, (25, 15)  # row 20..24 empty: the shape must come from the file


def write(path: Path, text: str, compress: bool = False) -> Path:
    if compress:
        with gzip.open(path, "wt", newline="") as f:
            f.write(text)
    else:
        path.write_text(text, newline="")
    return path


# ------------------------------------------------------------------ formats


def test_npz_keeps_indices_shape_and_sums_duplicates(tmp_path, coo):
    rows, cols, values, shape = coo
    ts = np.arange(len(rows), dtype=np.int64) + 1000
    p = tmp_path / "m.npz"
    np.savez(p, rows=rows, cols=cols, values=values, shape=np.array(shape), timestamps=ts)
    inter, summary = load_interactions(p)
    assert inter.shape == shape
    assert inter.row_vocab is None and inter.col_vocab is None
    np.testing.assert_array_equal(dense(inter), reference(rows, cols, values, shape))
    assert_canonical(inter)
    pairs = len(np.unique(rows.astype(np.int64) * 15 + cols))
    assert summary.kept == pairs == inter.nnz
    assert summary.merged_duplicates == len(rows) - pairs
    # timestamps of merged pairs: the latest one
    for r, c, t in zip(inter.rows[:20], inter.cols[:20], inter.timestamps[:20]):
        assert t == ts[(rows == r) & (cols == c)].max()


def test_npz_without_shape_uses_max_plus_one(tmp_path):
    p = tmp_path / "m.npz"
    np.savez(p, rows=np.array([3, 0], np.int32), cols=np.array([1, 7], np.int32))
    inter, _ = load_interactions(p)
    assert inter.shape == (4, 8)
    np.testing.assert_array_equal(inter.rows, [0, 3])
    np.testing.assert_array_equal(inter.cols, [7, 1])
    np.testing.assert_array_equal(inter.values, [1.0, 1.0])


def test_npz_is_test_and_ids_kept(tmp_path):
    p = tmp_path / "m.npz"
    np.savez(
        p,
        rows=np.array([1, 0, 1], np.int32),
        cols=np.array([0, 1, 1], np.int32),
        is_test=np.array([True, False, False]),
        row_ids=np.array([100, 50], np.int32),
        col_ids=np.array([7, 9], np.int32),
        shape=np.array([2, 2]),
    )
    inter, _ = load_interactions(p)
    np.testing.assert_array_equal(inter.rows, [0, 1, 1])
    np.testing.assert_array_equal(inter.is_test, [False, True, False])
    assert inter.row_vocab.decode(inter.rows).tolist() == [100, 50, 50]
    assert inter.row_vocab.encode([50, 100]).tolist() == [1, 0]


@pytest.mark.parametrize("compress", [False, True])
def test_csv_string_ids_match_reference(tmp_path, coo, compress):
    rows, cols, values, _ = coo
    lines = ["user,item,rating"] + [f"u{r},item {c},{v:g}" for r, c, v in zip(rows, cols, values)]
    p = write(tmp_path / ("r.csv.gz" if compress else "r.csv"), "\n".join(lines) + "\n", compress)
    inter, summary = load_interactions(p, row="user", col="item", value="rating")
    assert_canonical(inter)
    # map back through the vocabularies and compare with the reference on the original ids
    r_ids = np.array([int(s[1:]) for s in inter.row_vocab.decode(inter.rows)])
    c_ids = np.array([int(s.split()[1]) for s in inter.col_vocab.decode(inter.cols)])
    got = reference(r_ids, c_ids, inter.values, (20, 15))
    np.testing.assert_array_equal(got, reference(rows, cols, values, (20, 15)))
    assert inter.shape == (len(np.unique(rows)), len(np.unique(cols)))
    assert summary.rows_read == len(rows)


def test_csv_integer_ids_without_header_are_indices(tmp_path, coo):
    rows, cols, values, _ = coo
    text = "".join(f"{r},{c},{v:g}\n" for r, c, v in zip(rows, cols, values))
    inter, _ = load_interactions(write(tmp_path / "r.csv", text), value=2)
    assert inter.row_vocab is None
    shape = (int(rows.max()) + 1, int(cols.max()) + 1)
    assert inter.shape == shape
    np.testing.assert_array_equal(dense(inter), reference(rows, cols, values, shape))


def test_tsv_delimiter_and_quoted_fields(tmp_path):
    p = write(tmp_path / "r.tsv", 'a\tb\tw\n"x y"\t1\t2.5\nz\t1\t1\n')
    inter, _ = load_interactions(p, value="w")
    assert inter.row_vocab.ids.tolist() == ["x y", "z"]
    assert inter.col_vocab.ids.tolist() == [1]
    np.testing.assert_array_equal(inter.values, [2.5, 1.0])


def test_txt_with_commas_is_csv_and_declared_shape(tmp_path):
    p = write(tmp_path / "r.txt", "0,1\n2,0\n")
    inter, _ = load_interactions(p, shape=(5, 6))
    assert inter.shape == (5, 6)
    np.testing.assert_array_equal(dense(inter), reference([0, 2], [1, 0], [1, 1], (5, 6)))


@pytest.mark.parametrize("compress", [False, True])
def test_edge_list_whitespace_comments_and_weights(tmp_path, compress):
    text = "# source target weight\n% another comment\n\n  0 \t 1   2.5\r\n3\t4 1\n   \n  # indented comment\n0 1 0.5\n"
    p = write(tmp_path / ("g.edges.gz" if compress else "g.edges"), text, compress)
    inter, summary = load_interactions(p)
    np.testing.assert_array_equal(inter.rows, [0, 3])
    np.testing.assert_array_equal(inter.cols, [1, 4])
    np.testing.assert_array_equal(inter.values, [3.0, 1.0])  # third column is the weight; duplicate summed
    assert summary.rows_read == 3 and summary.merged_duplicates == 1


def test_edge_list_txt_and_multiblock_equals_reference(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    src, dst = rng.integers(0, 50, 400), rng.integers(0, 50, 400)
    lines = []
    for k, (a, b) in enumerate(zip(src, dst)):
        if k % 37 == 0:
            lines.append("# comment in the middle")
        lines.append(f"{a}{' ' * (k % 3 + 1)}{b}")
    p = write(tmp_path / "g.txt", "\n".join(lines))  # no final newline
    monkeypatch.setattr(text_blocks, "BLOCK_BYTES", 64)  # many blocks, lines split across reads
    inter, summary = load_interactions(p, square=True)
    assert inter.shape[0] == inter.shape[1] == max(src.max(), dst.max()) + 1
    want = reference(src, dst, np.ones(400), inter.shape) > 0
    np.testing.assert_array_equal(dense(inter), want.astype(float))
    assert summary.rows_read == 400


def test_string_ids_after_integer_blocks_reread_as_strings(tmp_path, monkeypatch):
    lines = [f"{i} {i % 7}" for i in range(200)] + ["node-x 3", "007 3"]
    p = write(tmp_path / "g.el", "\n".join(lines) + "\n")
    monkeypatch.setattr(text_blocks, "BLOCK_BYTES", 128)
    # Mostly integers: --ids auto refuses (test_bad_input); --ids map reads the column as strings.
    inter, _ = load_interactions(p, ids="map")
    assert inter.row_vocab.kind == "str"  # the failing column switched to strings ...
    assert inter.col_vocab.kind == "int"  # ... the other stayed integer
    assert "007" in set(inter.row_vocab.ids) and "node-x" in set(inter.row_vocab.ids)
    assert inter.nnz == 202


def test_square_graph_shares_one_vocabulary(tmp_path):
    p = write(tmp_path / "web.edges", "a.com b.org\nb.org c.net\nc.net a.com\nd.io a.com\n")
    inter, _ = load_interactions(p, square=True)
    assert inter.row_vocab is inter.col_vocab
    assert inter.shape == (4, 4)
    v = inter.row_vocab
    got = set(zip(v.decode(inter.rows), v.decode(inter.cols)))
    assert got == {("a.com", "b.org"), ("b.org", "c.net"), ("c.net", "a.com"), ("d.io", "a.com")}


def test_parquet_matches_reference(tmp_path, coo):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows, cols, values, _ = coo
    table = pa.table(
        {
            "u": pa.array([f"user{r}" for r in rows]).dictionary_encode(),
            "i": pa.array(cols.astype(np.int64)),
            "score": pa.array(values),
            "ts": pa.array((np.arange(len(rows)) * 1000).astype("datetime64[ms]")),
        }
    )
    p = tmp_path / "r.parquet"
    pq.write_table(table, p, row_group_size=64)
    inter, _ = load_interactions(p, row="u", col="i", value="score", timestamp="ts")
    assert_canonical(inter)
    r_ids = np.array([int(s[4:]) for s in inter.row_vocab.decode(inter.rows)])
    c_ids = inter.col_vocab.decode(inter.cols)  # ints mapped too: the row column forced ids='map'
    np.testing.assert_array_equal(
        reference(r_ids, c_ids, inter.values, (20, 15)), reference(rows, cols, values, (20, 15))
    )
    assert inter.timestamps.dtype == np.int64 and inter.timestamps.max() == len(rows) - 1  # ms -> seconds


def test_dataframe_matches_reference(coo):
    pd = pytest.importorskip("pandas")
    rows, cols, values, _ = coo
    df = pd.DataFrame({"user": rows, "item": pd.Categorical([f"i{c}" for c in cols]), "w": values})
    inter, summary = load_interactions(df, row="user", col="item", value="w", duplicates="sum")
    assert summary.source == "DataFrame"
    c_ids = np.array([int(s[1:]) for s in inter.col_vocab.decode(inter.cols)])
    r_ids = inter.row_vocab.decode(inter.rows)  # ids='auto' maps both once any id is a string
    np.testing.assert_array_equal(
        reference(r_ids, c_ids, inter.values, (20, 15)), reference(rows, cols, values, (20, 15))
    )


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo", "lil"])
def test_scipy_any_format_keeps_indices(coo, fmt):
    rows, cols, values, shape = coo
    m = sp.coo_matrix((values, (rows, cols)), shape=shape).asformat(fmt)
    inter, summary = load_interactions(m)
    assert summary.source == "scipy matrix"
    assert inter.shape == shape
    np.testing.assert_array_equal(dense(inter), reference(rows, cols, values, shape))
    assert_canonical(inter)


def test_scipy_coo_with_duplicates_sums_like_scipy():
    m = sp.coo_matrix((np.array([1.0, 2.0, 3.0]), (np.array([0, 0, 1]), np.array([2, 2, 0]))), shape=(2, 3))
    inter, summary = load_interactions(m)
    assert summary.merged_duplicates == 1
    np.testing.assert_array_equal(dense(inter), m.toarray())


def test_arrays_dict_and_tuple():
    a, _ = load_interactions({"rows": [2, 0], "cols": [1, 1], "values": [4.0, 5.0]})
    b, s = load_interactions((np.array([2, 0]), np.array([1, 1]), np.array([4.0, 5.0])))
    assert s.source == "arrays"
    for inter in (a, b):
        np.testing.assert_array_equal(inter.rows, [0, 2])
        np.testing.assert_array_equal(inter.values, [5.0, 4.0])
    c, _ = load_interactions({"rows": ["b", "a"], "cols": [1, 1]})
    assert c.row_vocab.ids.tolist() == ["a", "b"]


# ------------------------------------------------------------------ duplicates and zeros


def _dups(tmp_path) -> Path:
    # (0,1) three times with values 1, 2, 4 and times 5, 9, 7
    return write(tmp_path / "d.csv", "r,c,v,t\n0,1,1,5\n1,1,3,1\n0,1,2,9\n0,1,4,7\n")


def test_duplicates_sum_values_and_latest_timestamp(tmp_path):
    inter, s = load_interactions(_dups(tmp_path), value="v", timestamp="t")
    np.testing.assert_array_equal(inter.values, [7.0, 3.0])
    np.testing.assert_array_equal(inter.timestamps, [9, 1])
    assert (s.rows_read, s.kept, s.merged_duplicates) == (4, 2, 2)


def test_duplicates_first_keeps_first_line(tmp_path):
    inter, s = load_interactions(_dups(tmp_path), value="v", timestamp="t", duplicates="first")
    np.testing.assert_array_equal(inter.values, [1.0, 3.0])
    np.testing.assert_array_equal(inter.timestamps, [5, 1])
    assert s.merged_duplicates == 2


def test_binary_duplicates_collapse_to_one(tmp_path):
    inter, s = load_interactions(_dups(tmp_path), row="r", col="c")  # no value column: binary
    np.testing.assert_array_equal(inter.values, [1.0, 1.0])
    assert s.merged_duplicates == 2 and s.kept == 2


def test_zeros_kept_or_dropped_and_counted(tmp_path):
    p = write(tmp_path / "z.csv", "0,0,0\n0,1,2\n1,1,0\n")
    kept, s1 = load_interactions(p, value=2)
    assert kept.nnz == 3 and s1.dropped_zeros == 0
    dropped, s2 = load_interactions(p, value=2, keep_zeros=False)
    np.testing.assert_array_equal(dropped.values, [2.0])
    assert s2.dropped_zeros == 2
    assert s2.rows_read == s2.kept + s2.merged_duplicates + s2.dropped_zeros + s2.rejected


def test_negative_values_allowed_on_request(tmp_path):
    inter, _ = load_interactions(write(tmp_path / "n.csv", "0,0,-1.5\n"), value=2, allow_negative=True)
    np.testing.assert_array_equal(inter.values, [-1.5])


def test_summary_report():
    _, s = load_interactions({"rows": [0, 0], "cols": [1, 1]})
    assert isinstance(s, IngestSummary)
    assert s.to_dict()["merged_duplicates"] == 1
    assert "read 2 entries, kept 1" in str(s) and "1 x 2" in str(s)


# ------------------------------------------------------------------ vocabulary


def test_vocab_ints_roundtrip(tmp_path):
    raw = np.array([900, 5, 900, -3, 5], dtype=np.int64)
    v, codes = Vocab.from_ids(raw)
    assert len(v) == 3 and v.kind == "int"
    assert codes.dtype == np.int32
    np.testing.assert_array_equal(v.decode(codes), raw)
    np.testing.assert_array_equal(v.encode(raw), codes)
    v.save(tmp_path / "v.npz")
    assert Vocab.load(tmp_path / "v.npz") == v


def test_vocab_strings_saved_without_pickle(tmp_path):
    raw = np.array(["b", "ä€", "a", "b"], dtype=object)
    v, codes = Vocab.from_ids(raw)
    assert v.ids.tolist() == ["a", "b", "ä€"]
    assert v.decode(codes).tolist() == raw.tolist()
    v.save(tmp_path / "s.npz")
    with np.load(tmp_path / "s.npz", allow_pickle=False) as z:
        assert z["ids"].dtype.kind == "U"
    assert Vocab.load(tmp_path / "s.npz").encode(["ä€", "a"]).tolist() == [2, 0]


def test_vocab_unknown_ids_listed(tmp_path):
    v = Vocab([10, 3, 7])  # explicit order: index i <-> ids[i]
    assert v.encode([7, 10, 3]).tolist() == [2, 0, 1]
    assert v.encode([4, 7], missing=-1).tolist() == [-1, 2]
    with pytest.raises(ValueError, match=r"6 unknown id\(s\) out of 7: 1, 2, 4, 5, 6, \.\.\.") as e:
        v.encode([1, 2, 4, 5, 6, 8, 3])
    assert "8" not in str(e.value)  # at most five listed
    with pytest.raises(ValueError, match="unique"):
        Vocab(["a", "b", "a"])
    with pytest.raises(ValueError, match="str ids"):
        Vocab(["a"]).encode([1])


def test_ids_map_for_integer_ids(tmp_path):
    p = write(tmp_path / "m.csv", "1000000000000,5\n42,5\n")
    inter, _ = load_interactions(p, ids="map")
    assert inter.shape == (2, 1)
    assert inter.row_vocab.decode(inter.rows).tolist() == [42, 1000000000000]


# ------------------------------------------------------------------ shared real data


@pytest.mark.skipif(not (SHARED / "ml100k.npz").exists(), reason=f"shared data set not present at {SHARED}")
def test_shared_ml100k_counts():
    inter, s = load_interactions(SHARED / "ml100k.npz")
    assert inter.shape == (943, 1682)
    assert inter.nnz == s.kept == 100_000 and s.merged_duplicates == 0
    assert set(np.unique(inter.values)) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert inter.timestamps.min() == 874_724_710 and inter.timestamps.max() == 893_286_638
    assert_canonical(inter)


@pytest.mark.skipif(not (SHARED / "ml1m_implicit.npz").exists(), reason=f"shared data set not present at {SHARED}")
def test_shared_ml1m_split_counts():
    inter, _ = load_interactions(SHARED / "ml1m_implicit.npz")
    assert inter.shape == (6040, 3952) and inter.nnz == 1_000_209
    assert int(inter.is_test.sum()) == 200_042
