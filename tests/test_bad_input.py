"""The bad-input catalogue: every case raises IngestError naming source, place and value."""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp

import alsx
from alsx.data import guards, text_blocks
from alsx.data.ingest import IngestError, load_interactions


def write(path: Path, text: str, compress: bool = False) -> Path:
    if compress:
        with gzip.open(path, "wt", newline="") as f:
            f.write(text)
    else:
        path.write_text(text, newline="")
    return path


def raises(*parts: str, **kwargs):
    """Calls load_interactions(**kwargs) and checks that every part is in the message."""
    source = kwargs.pop("source")
    with pytest.raises(IngestError) as e:
        load_interactions(source, **kwargs)
    msg = str(e.value)
    for part in parts:
        assert part in msg, f"{part!r} not in {msg!r}"
    return msg


def test_error_is_a_value_error():
    assert issubclass(IngestError, ValueError)


# ------------------------------------------------------------------ malformed text


@pytest.mark.parametrize("compress", [False, True])
def test_csv_wrong_field_count(tmp_path, compress):
    p = write(tmp_path / ("bad.csv.gz" if compress else "bad.csv"), "u,i,r\n1,2,3\n4,5\n6,7,8\n", compress)
    raises(p.name, "line 3", "'4,5'", "expected 3 fields, got 2", source=p, value="r")


def test_csv_extra_field(tmp_path):
    p = write(tmp_path / "bad.csv", "1,2\n3,4\n5,6,7\n")
    raises("bad.csv", "line 3", "'5,6,7'", "expected 2 fields, got 3", source=p)


def test_edge_list_line_numbers_count_comments(tmp_path):
    p = write(tmp_path / "g.edges", "# header comment\n\n1 2\n% more\n3\n4 5\n")
    raises("g.edges", "line 5", "'3'", "expected 2 fields, got 1", source=p)


def test_non_numeric_index_in_index_mode(tmp_path):
    p = write(tmp_path / "idx.csv", "0,1\n2,x7\n")
    raises("idx.csv", "line 2", "'x7'", "--ids index", "--ids map", source=p, ids="index")


def test_non_numeric_value(tmp_path):
    p = write(tmp_path / "v.csv", "0,1,2.5\n1,1,abc\n")
    raises("v.csv", "line 2", "'abc'", "not a number", source=p, value=2)


def test_empty_field_is_not_a_silent_null(tmp_path):
    p = write(tmp_path / "e.csv", "0,1,2.5\n1,1,\n")
    raises("e.csv", "line 2", "'1,1,'", source=p, value=2)


def test_empty_string_id(tmp_path):
    p = write(tmp_path / "s.csv", "user,item\nalice,x\n,y\n")
    raises("s.csv", "line 3", "empty row id", source=p)


def test_error_in_a_late_block_has_the_exact_line(tmp_path, monkeypatch):
    lines = [f"{i} {i + 1}" for i in range(300)]
    lines[250] = "250 251 7 8"
    p = write(tmp_path / "big.el", "# c\n" + "\n".join(lines) + "\n")
    monkeypatch.setattr(text_blocks, "BLOCK_BYTES", 100)
    raises("big.el", "line 252", "'250 251 7 8'", "expected 2 fields, got 4", source=p)


def test_invalid_utf8(tmp_path):
    p = tmp_path / "u.csv"
    p.write_bytes(b"a,b\n\xff\xfe,c\n")
    raises("u.csv", "line 2", "invalid UTF-8", source=p, header=False)


# ------------------------------------------------------------------ columns


def test_missing_column_name_lists_available(tmp_path):
    p = write(tmp_path / "c.csv", "user,item,score\n1,2,3\n")
    raises("c.csv", "'rating'", "['user', 'item', 'score']", source=p, value="rating")


def test_missing_column_number(tmp_path):
    p = write(tmp_path / "c.csv", "1,2\n")
    raises("c.csv", "no column 4", source=p, value=4)


def test_missing_npz_key_lists_available(tmp_path):
    p = tmp_path / "k.npz"
    np.savez(p, rows=np.array([0]), columns=np.array([0]))
    raises("k.npz", "'cols'", "['rows', 'columns']", source=p)


def test_missing_dataframe_column():
    pd = pytest.importorskip("pandas")
    raises(
        "DataFrame",
        "'item'",
        "['user', 'movie']",
        source=pd.DataFrame({"user": [1], "movie": [2]}),
        row="user",
        col="item",
    )


# ------------------------------------------------------------------ values


def test_nan_value_in_csv(tmp_path):
    p = write(tmp_path / "n.csv", "0,0,1\n0,1,nan\n")
    raises("n.csv", "line 2", "'0,1,nan'", "nan", "not finite", source=p, value=2)


def test_inf_value_in_npz(tmp_path):
    p = tmp_path / "inf.npz"
    np.savez(p, rows=np.array([0, 1, 2]), cols=np.array([0, 0, 0]), values=np.array([1.0, 2.0, np.inf]))
    raises("inf.npz", "index 2", "inf", "not finite", source=p)


def test_value_overflowing_float32(tmp_path):
    p = write(tmp_path / "o.csv", "0,0,1e39\n")
    raises("o.csv", "line 1", "1e+39", "float32", source=p, value=2)


def test_negative_weight(tmp_path):
    p = write(tmp_path / "w.edges", "0 1 1.0\n1 2 -2\n")
    raises("w.edges", "line 2", "'1 2 -2'", "-2.0", "values must be >= 0", "allow_negative=True", source=p)


def test_nan_in_dataframe_names_row():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"u": [0, 1, 2], "i": [0, 0, 1], "w": [1.0, float("nan"), 2.0]})
    raises("DataFrame", "row 1", "nan", source=df, row="u", col="i", value="w")


def test_missing_id_in_dataframe():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"u": ["a", None, "c"], "i": [0, 0, 1]})
    raises("DataFrame", "row 1", "missing value", source=df, row="u", col="i")


def test_nan_in_scipy_matrix():
    m = sp.csr_matrix(np.array([[1.0, 0.0], [0.0, np.nan]]))
    raises("scipy matrix", "index 1", "nan", source=m)


# ------------------------------------------------------------------ indices and shapes


def test_negative_index_npz(tmp_path):
    p = tmp_path / "neg.npz"
    np.savez(p, rows=np.array([0, 3, -1], np.int32), cols=np.array([0, 1, 2], np.int32))
    raises("neg.npz", "index 2", "negative row index -1", source=p)


def test_negative_index_text(tmp_path):
    p = write(tmp_path / "neg.csv", "0,1\n2,-5\n")
    raises("neg.csv", "line 2", "'2,-5'", "negative col index -5", source=p, ids="index")


def test_index_outside_declared_shape(tmp_path):
    p = write(tmp_path / "s.csv", "0,1\n9,1\n")
    raises("s.csv", "line 2", "'9,1'", "row index 9", "(5, 5)", source=p, shape=(5, 5))


def test_npz_shape_smaller_than_data(tmp_path):
    p = tmp_path / "small.npz"
    np.savez(p, rows=np.array([0, 1]), cols=np.array([0, 6]), shape=np.array([2, 5]))
    raises("small.npz", "index 1", "col index 6", "declared shape (2, 5)", source=p)


def test_declared_shape_smaller_than_vocabulary(tmp_path):
    p = write(tmp_path / "v.csv", "a,x\nb,y\nc,z\n")
    raises("v.csv", "(2, 3)", "3 x 3", source=p, shape=(2, 3), header=False)


def test_float_index_with_fraction_npz(tmp_path):
    p = tmp_path / "f.npz"
    np.savez(p, rows=np.array([0.0, 1.0, 2.5]), cols=np.array([0, 0, 0]))
    raises("f.npz", "index 2", "2.5", "non-integer", source=p)


def test_bool_indices_npz(tmp_path):
    p = tmp_path / "b.npz"
    np.savez(p, rows=np.array([True, False]), cols=np.array([0, 1]))
    raises("b.npz", "'rows'", "bool", source=p)


def test_npz_arrays_of_different_lengths(tmp_path):
    p = tmp_path / "len.npz"
    np.savez(p, rows=np.array([0, 1, 2]), cols=np.array([0, 1]), values=np.ones(3))
    raises("len.npz", "different lengths", "'rows': 3", "'cols': 2", source=p)


def test_npz_object_array_refused(tmp_path):
    p = tmp_path / "obj.npz"
    np.savez(p, rows=np.array([0, "a"], dtype=object), cols=np.array([0, 1]))
    raises("obj.npz", "'rows'", "pickle", source=p)


def test_arrays_of_different_lengths():
    raises("arrays", "different lengths", source={"rows": [0, 1], "cols": [0]})


def test_string_index_in_index_mode_dataframe():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"u": ["3", "x"], "i": [0, 1]})
    raises("DataFrame", "row 1", "'x'", "--ids index", "--ids map", source=df, row="u", col="i", ids="index")


# ------------------------------------------------------------------ empty input


def test_empty_csv_file(tmp_path):
    raises("empty.csv", "no entries", source=write(tmp_path / "empty.csv", ""))


def test_header_only_csv(tmp_path):
    raises("head.csv", "no entries", source=write(tmp_path / "head.csv", "user,item\n"))


def test_comments_only_edge_list(tmp_path):
    raises("c.edges", "no entries", source=write(tmp_path / "c.edges", "# nothing\n% here\n\n"))


def test_empty_npz(tmp_path):
    p = tmp_path / "e.npz"
    np.savez(p, rows=np.zeros(0, np.int32), cols=np.zeros(0, np.int32))
    raises("e.npz", "no entries", source=p)


def test_all_zero_values_dropped(tmp_path):
    p = write(tmp_path / "z.csv", "0,0,0\n1,1,0\n")
    raises("z.csv", "keep_zeros=False", source=p, value=2, keep_zeros=False)


# ------------------------------------------------------------------ duplicates


def test_duplicate_error_names_pair_and_both_lines(tmp_path):
    p = write(tmp_path / "d.csv", "user,item\nalice,x\nbob,y\nbob,x\nalice,x\n")
    raises(
        "d.csv",
        "(row 'alice', col 'x')",
        "line 2 ('alice,x')",
        "line 5 ('alice,x')",
        "--duplicates error",
        "--duplicates sum",
        source=p,
        duplicates="error",
    )


def test_duplicate_error_after_dropping_zeros_keeps_line_numbers(tmp_path):
    p = write(tmp_path / "d.csv", "0,0,0\n0,1,1\n5,5,0\n0,1,2\n")
    raises("d.csv", "(row 0, col 1)", "line 2", "line 4", source=p, value=2, keep_zeros=False, duplicates="error")


def test_duplicate_error_npz_names_positions(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, rows=np.array([4, 0, 2, 0]), cols=np.array([1, 3, 1, 3]))
    raises("d.npz", "(row 0, col 3)", "index 1", "index 3", source=p, duplicates="error")


def test_duplicates_disagreeing_on_is_test(tmp_path):
    p = tmp_path / "t.npz"
    np.savez(p, rows=np.array([0, 1, 0]), cols=np.array([2, 2, 2]), is_test=np.array([False, True, True]))
    raises("t.npz", "(row 0, col 2)", "index 0", "index 2", "is_test", source=p)


def test_unknown_format(tmp_path):
    raises("data.xyz", "--format", "fmt=", source=write(tmp_path / "data.xyz", "0 1\n"))


# ------------------------------------------------------------------ column names and header detection
# Rule (load_interactions docstring): names need a header that holds them; the row/col defaults
# (columns 0 and 1) apply only when no column is left without a role.

TS_CSV = "ts,user,item\n1600000000,1,2\n1600000100,3,4\n1600000200,1,4\n"


def test_named_columns_read_from_the_header(tmp_path):
    p = write(tmp_path / "t.csv", TS_CSV)
    inter, summary = load_interactions(p, row="user", col="item")
    assert inter.shape == (4, 5)  # indices as given: rows 1 and 3, columns 2 and 4
    assert sorted(zip(inter.rows.tolist(), inter.cols.tolist())) == [(1, 2), (1, 4), (3, 4)]
    assert "row = column 'user', col = column 'item' (header line 1)" in str(summary)


def test_numbered_columns_skip_a_detected_header(tmp_path):
    inter, summary = load_interactions(write(tmp_path / "t.csv", TS_CSV), row=1, col=2)
    assert sorted(zip(inter.rows.tolist(), inter.cols.tolist())) == [(1, 2), (1, 4), (3, 4)]
    assert "header line 1" in str(summary)


def test_name_missing_from_header_lists_the_columns(tmp_path):
    p = write(tmp_path / "t.csv", TS_CSV.replace("user", "uid"))
    raises("t.csv", "line 1", "no column 'user' for --row", "['ts', 'uid', 'item']", source=p, row="user", col="item")


def test_names_on_a_file_without_header(tmp_path):
    p = write(tmp_path / "t.csv", TS_CSV.split("\n", 1)[1])
    raises(
        "t.csv",
        "line 1 ('1600000000,1,2')",
        "--row 'user'",
        "not a header",
        "'1600000000'",
        source=p,
        row="user",
        col="item",
    )


def test_defaults_refused_when_a_header_column_would_be_unused(tmp_path):
    # The OOM of issue 15: column 0 (a timestamp) silently taken for the row id.
    p = write(tmp_path / "t.csv", TS_CSV)
    raises("t.csv", "line 1", "--row 0 ('ts')", "--col 1 ('user')", "'item' unused", "pass --row and --col", source=p)


def test_defaults_refused_without_header_and_three_fields(tmp_path):
    p = write(tmp_path / "t.csv", TS_CSV.split("\n", 1)[1])
    raises("t.csv", "no header", "line 1 ('1600000000,1,2') has 3 fields", "column(s) 2 unused", source=p)


def test_defaults_refused_when_only_the_value_is_named(tmp_path):
    p = write(tmp_path / "t.csv", "ts,user,item,rating\n1600000000,1,2,5\n")
    raises("t.csv", "--row 0 ('ts')", "'item' unused", source=p, value="rating")


def test_default_that_takes_a_named_column(tmp_path):
    p = write(tmp_path / "t.csv", "ts,user\n1600000000,1\n")
    raises("t.csv", "--row defaults to column 0", "timestamp column (--timestamp)", source=p, timestamp="ts")


def test_defaults_kept_when_every_column_has_a_role(tmp_path):
    inter, _ = load_interactions(write(tmp_path / "t.csv", "r,c,v\n0,1,2.5\n"), value="v")
    assert (inter.rows.tolist(), inter.cols.tolist(), inter.values.tolist()) == ([0], [1], [2.5])


def test_edge_list_with_a_fourth_field_needs_names(tmp_path):
    raises("g.edges", "column(s) 3 unused", source=write(tmp_path / "g.edges", "0 1 1.0 1600000000\n"))


def test_parquet_defaults_refused(tmp_path):
    p = tmp_path / "t.parquet"
    pq.write_table(pa.table({"ts": [1600000000], "user": [1], "item": [2]}), p)
    raises("t.parquet", "--row 0 ('ts')", "'item' unused", source=p)


def test_dataframe_defaults_refused():
    pd = pytest.importorskip("pandas")
    raises(
        "DataFrame",
        "row=0 ('ts')",
        "row= and col=",
        "df[[",
        source=pd.DataFrame({"ts": [1600000000], "user": [1], "item": [2]}),
    )


# ------------------------------------------------------------------ allocations sized by input values


TS_IDS = "".join(f"{1600000000 + 7 * i},{i % 5}\n" for i in range(30))


def test_timestamp_as_index_is_refused_before_allocating(tmp_path):
    p = write(tmp_path / "ts.csv", TS_IDS)
    for ids in ("auto", "index"):
        raises(
            "ts.csv",
            "line 30 ('1600000203,4')",
            "row index 1,600,000,203",
            "1,600,000,204 rows for 30 entries",
            "--ids map",
            source=p,
            ids=ids,
        )
    inter, _ = load_interactions(p, ids="map")  # what the message suggests works
    assert inter.shape == (30, 5)
    np.testing.assert_array_equal(inter.row_vocab.ids, 1600000000 + 7 * np.arange(30))


def test_npz_index_far_beyond_its_entries(tmp_path):
    p = tmp_path / "big.npz"
    np.savez(p, rows=np.array([0, 1_600_000_000]), cols=np.array([0, 1]))
    raises("big.npz", "index 1", "row index 1,600,000,000", "--ids map", source=p)


def test_dense_rule_threshold():
    """An extent up to SPARSE_MIN, or up to SPARSE_RATIO x the entries, is accepted."""
    ok = lambda size, n: guards.index_space_problem(  # noqa: E731
        [guards.Extent("row", size, True, "c", lambda: None), guards.Extent("col", 1, True, "c", lambda: None)],
        n,
        "",
        available=1 << 40,
    )
    ok(guards.SPARSE_MIN, 1)
    ok(guards.SPARSE_RATIO * 100_000, 100_000)
    with pytest.raises(guards.Refused):
        ok(guards.SPARSE_RATIO * 100_000 + 1, 100_000)


def test_index_range_over_available_ram(tmp_path, monkeypatch):
    monkeypatch.setattr(guards, "available_ram", lambda: 1000)  # 16 B x (100 + 2) indices do not fit
    p = write(tmp_path / "m.csv", "0,0\n99,1\n")
    raises(
        "m.csv", "line 2 ('99,1')", "a 100 x 2 matrix needs at least 1.59 KiB", "1000 B of RAM", "--ids map", source=p
    )


def test_declared_npz_shape_over_available_ram(tmp_path, monkeypatch):
    p = tmp_path / "s.npz"
    np.savez(p, rows=np.array([0, 1]), cols=np.array([0, 1]), shape=np.array([2_000_000_000, 2_000_000_000]))
    monkeypatch.setattr(guards, "available_ram", lambda: 8 << 30)
    raises(
        "s.npz",
        "2,000,000,000 x 2,000,000,000 matrix needs at least 59.6 GiB",
        "8 GiB of RAM",
        "declared by the 'shape' of",
        source=p,
    )


def _npz_member(path: Path, name: str, header_shape: tuple, dtype: str, data: bytes) -> None:
    """Adds an .npy member whose header claims ``header_shape`` but which holds ``data``."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": header_shape})
    with zipfile.ZipFile(path, "a") as z:
        z.writestr(name + ".npy", buf.getvalue() + data)


def test_npz_header_claiming_more_than_its_data(tmp_path):
    p = tmp_path / "h.npz"
    np.savez(p, cols=np.array([0, 1]))
    _npz_member(p, "rows", (10**12,), "<i8", np.zeros(2, np.int64).tobytes())
    raises("h.npz", "array 'rows' claims shape (1000000000000,)", "the file is damaged", source=p)


def test_npz_arrays_over_available_ram(tmp_path, monkeypatch):
    p = tmp_path / "r.npz"
    np.savez(p, rows=np.arange(1000), cols=np.arange(1000))
    monkeypatch.setattr(guards, "available_ram", lambda: 4096)
    raises("r.npz", "its arrays need 15.6 KiB", "4 KiB of RAM", source=p)


def test_index_beyond_int32_suggests_map(tmp_path):
    p = write(tmp_path / "b.csv", "0,0\n3000000000,1\n")
    raises("b.csv", "line 2", "3000000000", "does not fit in int32", "--ids map", source=p, ids="index")


def test_negative_index_suggests_map(tmp_path):
    raises(
        "n.csv", "line 1", "negative row index -3", "--ids map", source=write(tmp_path / "n.csv", "-3,0\n"), ids="index"
    )


# ------------------------------------------------------------------ --ids auto on mostly-integer columns


def test_one_letter_in_an_integer_column(tmp_path):
    p = write(tmp_path / "o.csv", "".join(f"{i},{i % 7}\n" for i in range(50)) + "1O,3\n")
    raises(
        "o.csv",
        "line 51 ('1O,3')",
        "row id '1O' in column 0 is not an integer",
        "50 of the column's 51",
        "--ids auto",
        "--ids map",
        source=p,
    )
    inter, _ = load_interactions(p, ids="map")  # the ids really are strings: every line kept
    assert inter.row_vocab.kind == "str" and inter.nnz == 51 and "1O" in set(inter.row_vocab.ids)


def test_quoted_comma_in_an_integer_column(tmp_path):
    p = write(tmp_path / "q.csv", '0,1\n2,3\n"0,9",4\n5,6\n')
    raises("q.csv", "line 3", "'0,9'", "3 of the column's 4", "--ids map", source=p)


def test_mixed_column_in_a_late_block_names_the_line(tmp_path, monkeypatch):
    lines = [f"{i} {i % 7}" for i in range(300)]
    lines[260] = "260 x7"
    lines[280] = "280 y"
    p = write(tmp_path / "g.el", "# comment\n" + "\n".join(lines) + "\n")
    monkeypatch.setattr(text_blocks, "BLOCK_BYTES", 128)
    raises(
        "g.el", "line 262 ('260 x7')", "column id 'x7' in column 1", "298 of the column's 300", "(2 are not)", source=p
    )


def test_string_columns_with_some_integers_stay_strings(tmp_path, monkeypatch):
    # At most half of the tokens are integers: string ids, the integers among them too.
    lines = [f"{i},i{i % 3}" for i in range(10)] + [f"u{i},i{i % 3}" for i in range(30)]
    p = write(tmp_path / "s.csv", "\n".join(lines) + "\n")
    monkeypatch.setattr(text_blocks, "BLOCK_BYTES", 64)  # the integer lines come first, in blocks of their own
    inter, _ = load_interactions(p)
    assert inter.row_vocab.kind == "str" and len(inter.row_vocab) == 40 and inter.nnz == 40
    assert {"0", "9", "u0", "u29"} <= set(inter.row_vocab.ids)


def test_square_graph_integer_rows_and_string_columns(tmp_path):
    inter, _ = load_interactions(write(tmp_path / "g.edges", "1 a\n2 b\n3 c\n"), square=True)
    assert inter.row_vocab is inter.col_vocab and inter.shape == (6, 6)


def test_partitioned_read_applies_the_same_rule(tmp_path):
    from alsx.data.partitioned import load_partitioned

    p = write(tmp_path / "o.csv", "".join(f"{i},{i % 7}\n" for i in range(50)) + "1O,3\n")
    with pytest.raises(IngestError) as e:
        load_partitioned(str(p))
    for part in ("o.csv", "line 51", "'1O'", "--ids map"):
        assert part in str(e.value)


# ------------------------------------------------------------------ damaged and non-text files


def test_truncated_gzip(tmp_path):
    data = gzip.compress("".join(f"{i},{i % 7}\n" for i in range(20000)).encode())
    for name, cut in (("t.csv.gz", len(data) // 2), ("h.csv.gz", 15)):
        p = tmp_path / name
        p.write_bytes(data[:cut])
        raises(name, "cannot read the compressed data", "truncated or damaged", source=p)


def test_npz_object_arrays_name_array_and_file(tmp_path):
    for key in ("rows", "shape", "row_ids"):
        p = tmp_path / f"o_{key}.npz"
        arrays = {"rows": np.array([0, 1]), "cols": np.array([0, 1])}
        arrays[key] = np.array([0, "a"], dtype=object)
        np.savez(p, **arrays)
        raises(p.name, f"array {key!r}", "pickle", source=p)


def test_zip_that_is_not_an_npz(tmp_path):
    p = tmp_path / "z.npz"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("readme.txt", "hello")
    raises("z.npz", "not an .npz", "readme.txt", source=p)
    q = tmp_path / "y.npz"
    with zipfile.ZipFile(q, "w") as z:
        z.writestr("rows.npy", "hi")
        z.writestr("cols.npy", "there")
    raises("y.npz", "array 'rows' is not a readable .npy", source=q)


def test_truncated_npz(tmp_path):
    p = tmp_path / "t.npz"
    np.savez(p, rows=np.arange(1000), cols=np.arange(1000))
    p.write_bytes(p.read_bytes()[:5000])
    raises("t.npz", "not a readable zip file", source=p)


def test_npz_with_a_corrupt_member(tmp_path):
    p = tmp_path / "c.npz"
    np.savez(p, rows=np.arange(1000), cols=np.arange(1000))
    raw = bytearray(p.read_bytes())
    raw[500] ^= 0xFF  # inside the stored data of 'rows': the CRC no longer matches
    p.write_bytes(bytes(raw))
    raises("c.npz", "cannot read array 'rows'", "CRC", source=p)


@pytest.mark.parametrize("name", ["e.csv", "e.npz", "e.parquet", "e.csv.gz", "e.edges"])
def test_empty_files(tmp_path, name):
    p = tmp_path / name
    p.write_bytes(b"")
    raises(name, "the file is empty (0 bytes)", source=p)


def test_binary_files_given_as_text(tmp_path):
    npz = tmp_path / "x.npz"
    np.savez(npz, rows=np.arange(10), cols=np.arange(10))
    (tmp_path / "a.csv").write_bytes(npz.read_bytes())
    raises("a.csv", "a binary file, not text", "zip archive", "--format npz", source=tmp_path / "a.csv")
    (tmp_path / "b.csv").write_bytes(gzip.compress(b"0,1\n"))
    raises("b.csv", "gzip", ".gz suffix", source=tmp_path / "b.csv")
    (tmp_path / "c.csv").write_bytes(b"0,1\n2,3\n" + bytes(range(256)))
    raises("c.csv", "line 3", "NUL byte", source=tmp_path / "c.csv")
    pq.write_table(pa.table({"u": [0], "i": [1]}), tmp_path / "d.parquet")
    (tmp_path / "d.edges").write_bytes((tmp_path / "d.parquet").read_bytes())
    raises("d.edges", "Parquet", "--format parquet", source=tmp_path / "d.edges")


def test_invalid_utf8_header(tmp_path):
    p = tmp_path / "h.csv"
    p.write_bytes(b"us\xe9r,item\nalice,x\n")
    raises("h.csv", "line 1", "invalid UTF-8", "0xe9", source=p)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_interactions(tmp_path / "nope.csv")
    assert isinstance(e.value, IngestError) and "nope.csv" in str(e.value)


# ------------------------------------------------------------------ the path as the user runs it


def _alsx(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``alsx`` in a child process that imports the alsx under test."""
    env = dict(os.environ, PYTHONPATH=str(Path(alsx.__file__).resolve().parents[1]), JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-m", "alsx.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("case", ["timestamp-as-row", "one-letter-id", "defaults-on-header"])
def test_cli_train_on_bad_file(tmp_path, case):
    name, text, extra, wants = {
        "timestamp-as-row": ("ts.csv", TS_IDS, [], ["ts.csv", "line 30", "1,600,000,203", "--ids map"]),
        "one-letter-id": (
            "o.csv",
            "".join(f"{i},{i % 7}\n" for i in range(50)) + "1O,3\n",
            [],
            ["o.csv", "line 51", "'1O'", "--ids map"],
        ),
        "defaults-on-header": ("t.csv", TS_CSV, [], ["t.csv", "line 1", "'ts'", "--row", "--col"]),
    }[case]
    write(tmp_path / name, text)
    r = _alsx("train", name, "--out", "model", "--dim", "4", "--epochs", "1", *extra, cwd=tmp_path)
    assert r.returncode != 0
    for w in wants:
        assert w in r.stderr, f"{w!r} not in stderr:\n{r.stderr[-2000:]}"
    assert not (tmp_path / "model" / "row_embeddings.npy").exists()
