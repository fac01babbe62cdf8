"""``alsx recommend`` / ``similar`` / ``export --ann`` as a user runs them: original ids in, original ids out.

A tiny model with string ids is trained once (in-process); each test runs the ``alsx``
command in a subprocess on this checkout's src and checks its output against a float64
NumPy reference built from the model's saved tables and the training CSV itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from alsx.cli import main
from alsx.data.synthetic import community_graph

SRC = str(Path(__file__).resolve().parents[1] / "src")
K = 4


def alsx(*args: str, stdin: str | None = None, devices: int = 1) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("ALSX_DEBUG", "XLA_FLAGS")}
    env.update(
        PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
    )
    return subprocess.run(
        [sys.executable, "-m", "alsx.cli", *map(str, args)],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """(model folder, row ids, col ids, W, H, seen {user: set(items)}) of a tiny string-id model."""
    x = community_graph(n_nodes=120, n_edges=900, n_communities=4, seed=5)
    tmp = tmp_path_factory.mktemp("serve")
    csv = tmp / "events.csv"
    csv.write_text("user,item\n" + "".join(f"u{r},i{c}\n" for r, c in zip(x.rows, x.cols)))
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
                "--out",
                str(out),
                "--dim",
                "6",
                "--epochs",
                "3",
                "--split",
                "none",
            ]
        )
        == 0
    )
    rows = np.load(out / "row_vocab.npz")["ids"]
    cols = np.load(out / "col_vocab.npz")["ids"]
    seen: dict[str, set[str]] = {}
    for r, c in zip(x.rows, x.cols):
        seen.setdefault(f"u{r}", set()).add(f"i{c}")
    w = np.load(out / "row_embeddings.npy").astype(np.float64)
    h = np.load(out / "col_embeddings.npy").astype(np.float64)
    return out, rows, cols, w, h, seen


def reference(model, users: list[str], k: int = K) -> dict[str, list[tuple[str, float]]]:
    """Exact top-k unseen columns per user, float64, ties lower index first."""
    _, rows, cols, w, h, seen = model
    out = {}
    for u in users:
        s = w[list(rows).index(u)] @ h.T
        s[[i for i, c in enumerate(cols) if c in seen[u]]] = -np.inf
        order = np.lexsort((np.arange(len(s)), -s))[:k]
        out[u] = [(str(cols[j]), float(s[j])) for j in order if np.isfinite(s[j])]
    return out


def parse(stdout: str) -> dict:
    lines = [json.loads(line) for line in stdout.splitlines()]
    return {r["row"]: [(e["id"], e["score"]) for e in r["recommendations"]] for r in lines}


def check(got: dict, want: dict) -> None:
    assert list(got) == list(want)
    for u, recs in want.items():
        assert [i for i, _ in got[u]] == [i for i, _ in recs], u
        np.testing.assert_allclose([s for _, s in got[u]], [s for _, s in recs], rtol=1e-4, atol=1e-5)


def test_recommend_ids_stdin_and_rows_file(model, tmp_path, capsys):
    folder, rows = model[0], model[1]
    users = [str(u) for u in rows[[5, 0, 17]]]
    want = reference(model, users)
    res = alsx("recommend", folder, *users, "-k", K)
    assert res.returncode == 0, res.stderr
    check(parse(res.stdout), want)
    # `recommend MODEL -` reads ids from stdin (it used to fail: "unknown id '-'"); batches of 2 rows
    res = alsx("recommend", folder, "-", "-k", K, "--batch-size", 2, stdin="\n".join(users) + "\n\n")
    assert res.returncode == 0, res.stderr
    check(parse(res.stdout), want)
    f = tmp_path / "ids.txt"
    f.write_text("\n".join(users) + "\n")
    capsys.readouterr()
    assert main(["recommend", str(folder), "--rows-file", str(f), "-k", str(K), "--batch-size", "2"]) == 0  # in-process
    check(parse(capsys.readouterr().out), want)


def _long_table(table) -> dict:
    got: dict = {}
    for r, rank, i, s in zip(*(table[c].to_pylist() for c in ("row", "rank", "id", "score"))):
        got.setdefault(r, []).append((rank, i, s))
    return {r: [(i, s) for rank, i, s in sorted(v)] for r, v in got.items()}


def test_recommend_all_to_parquet_and_csv(model, tmp_path):
    folder, rows = model[0], model[1]
    want = reference(model, [str(u) for u in rows])
    for name, read in (("recs.parquet", pq.read_table), ("recs.csv", pcsv.read_csv)):
        out = tmp_path / name
        res = alsx("recommend", folder, "--all", "-k", K, "--batch-size", 16, "--out", out)
        assert res.returncode == 0, res.stderr
        table = read(out)
        assert table.column_names == ["row", "rank", "id", "score"]
        got = _long_table(table)
        assert sorted(got) == sorted(want)
        check({u: got[u] for u in want}, want)


def test_recommend_sharded_over_two_devices_matches(model):
    folder, rows = model[0], model[1]
    users = [str(u) for u in rows[:9]]
    res = alsx("recommend", folder, *users, "-k", K, devices=2)
    assert res.returncode == 0, res.stderr
    check(parse(res.stdout), reference(model, users))


def test_recommend_errors(model, tmp_path, capsys):
    folder = model[0]
    f = tmp_path / "ids.txt"
    f.write_text(f"{model[1][0]}\nnobody\n")
    out = tmp_path / "recs.parquet"
    res = alsx("recommend", folder, "--rows-file", f, "--out", out, "--batch-size", 1)
    assert res.returncode == 2 and "'nobody' not in the model" in res.stderr, res.stderr
    assert not out.exists()  # no half-written table
    # the flag mistakes in-process (the same main() the command runs)
    assert main(["recommend", str(folder), str(model[1][0]), "--all"]) == 2
    assert "give the rows one way" in capsys.readouterr().err
    assert main(["recommend", str(folder), "--all", "--out", str(tmp_path / "recs.txt")]) == 2
    assert ".parquet or .csv" in capsys.readouterr().err


def test_similar_columns_and_rows(model, capsys):
    folder, rows, cols, w, h = model[:5]
    for flag, ids, table in (([], cols, h), (["--rows"], rows, w)):
        query = [str(ids[3]), str(ids[0])]
        res = alsx("similar", folder, *query, "-k", 3, *flag)
        assert res.returncode == 0, res.stderr
        lines = [json.loads(line) for line in res.stdout.splitlines()]
        assert [r["id"] for r in lines] == query
        unit = table / np.linalg.norm(table, axis=1, keepdims=True)
        for r in lines:
            j = list(ids).index(r["id"])
            cos = unit @ unit[j]
            cos[j] = -np.inf
            order = np.lexsort((np.arange(len(cos)), -cos))[:3]
            # a valid top 3: the reference's scores, each id's own cosine (columns with the same history have
            # the same vector, so exact ties may come in either order), no id twice, never the query
            got = [list(ids).index(e["id"]) for e in r["similar"]]
            np.testing.assert_allclose([e["score"] for e in r["similar"]], cos[order], atol=1e-5)
            np.testing.assert_allclose(cos[got], cos[order], atol=1e-5)
            assert len(set(got)) == 3 and j not in got
    capsys.readouterr()
    assert main(["similar", str(folder), str(rows[0])]) == 2  # a row id is not a column id
    assert "column id(s) 'u0' not in the model" in capsys.readouterr().err


def test_export_ann_and_recommend_with_it(model, tmp_path):
    pytest.importorskip("faiss")
    folder, rows = model[0], model[1]
    out = tmp_path / "export"
    res = alsx("export", folder, "--ann", "faiss", "--to", out, "--ef-search", 200)
    assert res.returncode == 0, res.stderr
    assert {"rows.parquet", "cols.parquet", "export.json", "ann.json", "columns.faiss"} <= {
        p.name for p in out.iterdir()
    }
    users = [str(u) for u in rows]
    res = alsx("recommend", folder, *users, "-k", K, "--ann", out)
    assert res.returncode == 0, res.stderr
    got, want = parse(res.stdout), reference(model, users)
    seen = model[5]
    assert all(not ({i for i, _ in got[u]} & seen[u]) for u in users)  # seen columns left out
    hits = sum(len({i for i, _ in got[u]} & {i for i, _ in want[u]}) for u in users)
    assert hits / sum(len(want[u]) for u in users) >= 0.95  # a small graph, a wide beam: nearly exact


def test_recommend_ann_from_another_model_is_refused(model, tmp_path):
    faiss = pytest.importorskip("faiss")
    from alsx.serve.ann import AnnSettings, build_index, save_index

    other = np.random.default_rng(0).normal(size=(len(model[2]), 6)).astype(np.float32)
    save_index(build_index(other, AnnSettings(m=8)), tmp_path / "idx")
    assert faiss is not None
    res = alsx("recommend", model[0], str(model[1][0]), "--ann", tmp_path / "idx")
    assert res.returncode == 2 and "another model's column table" in res.stderr, res.stderr
