"""The bad-input catalogue: every case raises IngestError naming source, place and value."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from alsx.data import ingest
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
    raises("idx.csv", "line 2", "'x7'", "ids='index'", source=p, ids="index")


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
    monkeypatch.setattr(ingest, "_BLOCK_BYTES", 100)
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
    raises("DataFrame", "'item'", "['user', 'movie']", source=pd.DataFrame({"user": [1], "movie": [2]}), row="user", col="item")


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
    raises("w.edges", "line 2", "'1 2 -2'", "-2.0", "allow_negative", source=p)


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
    raises("DataFrame", "row 1", "'x'", "ids='index'", source=df, row="u", col="i", ids="index")


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
    raises("d.csv", "(row 'alice', col 'x')", "line 2 ('alice,x')", "line 5 ('alice,x')", source=p, duplicates="error")


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
    raises("data.xyz", "fmt=", source=write(tmp_path / "data.xyz", "0 1\n"))
