"""``alsx export``: Parquet and npy files that hold exactly the model's tables and ids; the ANN over-fetch.

The round trip reads the files with pyarrow / NumPy alone (as a user of the files would),
not with alsx's reader, and compares bit for bit with the saved tables.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alsx.cli import main
from alsx.data.matrix import CSR
from alsx.data.synthetic import community_graph
from alsx.serve import export

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    x = community_graph(n_nodes=90, n_edges=700, n_communities=3, seed=2)
    tmp = tmp_path_factory.mktemp("export")
    csv = tmp / "events.csv"
    csv.write_text("user,item\n" + "".join(f"u{r},{c * 7}\n" for r, c in zip(x.rows, x.cols)))  # str rows, int cols
    out = tmp / "model"
    assert (
        main(
            [
                "train",
                str(csv),
                "--row",
                "user",
                "--col",
                "item",
                "--ids",
                "map",
                "--out",
                str(out),
                "--dim",
                "5",
                "--epochs",
                "2",
                "--split",
                "none",
            ]
        )
        == 0
    )
    return out


def _alsx(*args) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("ALSX_DEBUG", "XLA_FLAGS")}
    env.update(PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-m", "alsx.cli", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_export_parquet_round_trip_is_exact(folder, tmp_path):
    res = _alsx("export", folder, "--to", tmp_path / "out")
    assert res.returncode == 0, res.stderr
    info = json.loads((tmp_path / "out" / "export.json").read_text())
    assert info["format"] == "parquet" and info["row_ids"] == "str" and info["col_ids"] == "int"
    for side, stem in (("rows", "row"), ("cols", "col")):
        t = pq.read_table(tmp_path / "out" / f"{side}.parquet")
        assert t.column_names == ["id", "vector"]
        assert t.schema.field("vector").type == pa.list_(pa.float32(), 5)  # fixed-size list of d float32
        vectors = np.stack(t["vector"].to_numpy(zero_copy_only=False))
        np.testing.assert_array_equal(vectors, np.load(folder / f"{stem}_embeddings.npy"))
        assert t["id"].to_pylist() == np.load(folder / f"{stem}_vocab.npz")["ids"].tolist()
    assert pq.read_table(tmp_path / "out" / "rows.parquet").schema.field("id").type == pa.string()
    assert pq.read_table(tmp_path / "out" / "cols.parquet").schema.field("id").type == pa.int64()


def test_export_npy_round_trip_is_exact(folder, tmp_path):
    res = _alsx("export", folder, "--to", tmp_path / "out", "--format", "npy")
    assert res.returncode == 0, res.stderr
    for stem in ("row", "col"):
        table = np.load(tmp_path / "out" / f"{stem}_embeddings.npy", allow_pickle=False)
        ids = np.load(tmp_path / "out" / f"{stem}_ids.npy", allow_pickle=False)
        np.testing.assert_array_equal(table, np.load(folder / f"{stem}_embeddings.npy"))
        np.testing.assert_array_equal(ids, np.load(folder / f"{stem}_vocab.npz")["ids"])


@pytest.mark.parametrize("layout", export.LAYOUTS)
def test_parquet_layouts_in_several_row_groups(tmp_path, monkeypatch, layout):
    monkeypatch.setattr(export, "ROW_GROUP", 7)
    rng = np.random.default_rng(0)
    table = rng.normal(size=(30, 4)).astype(np.float32)
    for ids in (np.arange(30, dtype=np.int64) * 3, np.array([f"x{i}" for i in range(30)])):
        path = export.write_parquet(tmp_path / f"{layout}.parquet", ids, table, layout)
        assert pq.ParquetFile(path).num_row_groups == 5  # streamed 7 rows at a time
        got_ids, got = export.read_parquet(path)
        np.testing.assert_array_equal(got, table)
        np.testing.assert_array_equal(got_ids, ids)
    names = pq.read_table(path).column_names
    assert names == (["id", "vector"] if layout == "list" else ["id", "v0", "v1", "v2", "v3"])


def test_index_model_ids_are_the_indices():
    assert export.external_ids(None, 4).tolist() == [0, 1, 2, 3]


def test_search_excluding_over_fetches_past_seen_columns():
    """The over-fetch leaves out every seen column and still returns k of the rest, as exact search would."""
    faiss = pytest.importorskip("faiss")
    from alsx.serve.ann import AnnSettings, build_index, search_excluding

    rng = np.random.default_rng(1)
    table = rng.normal(size=(200, 8)).astype(np.float32)
    query = rng.normal(size=(6, 8)).astype(np.float32)
    ann = build_index(table, AnnSettings(m=16, ef_construction=200, ef_search=400))
    assert faiss.omp_get_max_threads() >= 1
    exact = np.argsort(-(query.astype(np.float64) @ table.T.astype(np.float64)), axis=1)
    # row r has seen its own best 3 r columns: the answer must skip them all
    seen = [exact[r, : 3 * r] for r in range(6)]
    indptr = np.concatenate([[0], np.cumsum([len(s) for s in seen])]).astype(np.int64)
    exclude = CSR(
        indptr=indptr, indices=np.concatenate(seen).astype(np.int32), values=np.ones(indptr[-1], np.float32), n_cols=200
    )
    scores, ids = search_excluding(ann, query, 5, exclude, np.arange(6))
    for r in range(6):
        assert not set(ids[r]) & set(seen[r])
        np.testing.assert_array_equal(ids[r], exact[r, 3 * r : 3 * r + 5])  # HNSW at this beam is exact here
        np.testing.assert_allclose(scores[r], query[r] @ table[ids[r]].T, rtol=1e-5)
