"""What `alsx train` writes serves all of its input; damaged model folders fail in one clear error.

* With a split, the saved tables are refit on all input (``--no-refit`` keeps the split-trained
  ones); train.npz holds every input entry either way, so ``recommend`` never returns what a
  row had; ``evaluate`` refuses a split whose test entries the tables trained on.
* ``ALS.load`` (and so ``evaluate`` / ``recommend``) names the damaged file and what is wrong.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from alsx import cli
from alsx.cli.guard import check_args
from alsx.data.ingest import load_interactions
from alsx.data.split import random_holdout
from alsx.data.synthetic import community_graph
from alsx.errors import ModelError, UsageError
from alsx.model import ALS

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
ML100K = HERE.parents[1] / "shared" / "data" / "ml100k.npz"
SMALL = ["--dim", "8", "--epochs", "2", "--reg", "0.05"]  # the CPU kernel: compiled once per process


def main(argv: list[str]) -> int:
    """`alsx ARGV` without the program's top-level catch, so errors reach the test as exceptions
    (their one-line form and exit codes are tested in test_cli_errors.py)."""
    args = cli.build_parser().parse_args(argv)
    check_args(args)
    return int(args.func(args) or 0)


def _alsx(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The `alsx` command as a user runs it, on the package under test."""
    env = dict(os.environ, PYTHONPATH=str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("XLA_FLAGS", None)
    return subprocess.run(
        [sys.executable, "-m", "alsx.cli", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300
    )


def _entries(csr) -> set[tuple[int, int]]:
    rows = np.repeat(np.arange(csr.n_rows), np.diff(csr.indptr))
    return set(zip(rows.tolist(), csr.indices.tolist()))


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    x = community_graph(n_nodes=200, n_edges=3000, n_communities=5, seed=5)
    path = tmp_path_factory.mktemp("data") / "g.npz"
    np.savez(path, rows=x.rows, cols=x.cols, shape=np.array(x.shape))
    data, _ = load_interactions(path)
    return path, data


@pytest.fixture(scope="module")
def models(graph, tmp_path_factory):
    """{'refit', 'kept', 'held-refit', 'held-kept'} -> model folders trained in-process on ``graph``."""
    path, _ = graph
    root = tmp_path_factory.mktemp("models")
    flags = {
        "refit": [],
        "kept": ["--no-refit"],
        "held-refit": ["--split", "heldout-rows"],
        "held-kept": ["--split", "heldout-rows", "--no-refit"],
    }
    for name, extra in flags.items():
        assert main(["train", str(path), "--out", str(root / name), *SMALL, *extra]) == 0
    return root


def _cfg(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


# ------------------------------------------------------------------------------------- refit
def test_refit_tables_are_the_fit_on_all_input(graph, models):
    path, data = graph
    refit, kept = models / "refit", models / "kept"
    on = _cfg(refit)["trained_on"]
    assert on["part"] == "all input" and on["refit"] is True and on["nnz"] == data.nnz
    assert on["evaluated_before_refit_on"]["split"] == "random"
    assert not (refit / "trained.npz").exists() and (refit / "split_history.json").exists()
    # The saved tables are those of a fit on every entry with the same settings (the same numbers: an 'auto'
    # alpha0 stays the one resolved on the training part, the model evaluated) ...
    hp = _cfg(kept)["hparams"]
    assert _cfg(refit)["hparams"] == hp and hp["reg"] == 0.05
    ref = ALS(dim=8, epochs=2, reg=0.05, unobserved_weight=hp["unobserved_weight"], progress=False).fit(data)
    w = np.load(refit / "row_embeddings.npy")
    np.testing.assert_allclose(w, ref.row_embeddings_, rtol=0, atol=1e-5 * np.abs(w).max())
    # ... not the split-trained ones, which --no-refit keeps.
    split = random_holdout(data, fraction=0.2, seed=0)
    kept_ref = ALS(dim=8, epochs=2, reg=0.05, progress=False).fit(split.train)
    wk = np.load(kept / "row_embeddings.npy")
    np.testing.assert_allclose(wk, kept_ref.row_embeddings_, rtol=0, atol=1e-5 * np.abs(wk).max())
    assert np.abs(w - wk).max() > 0.1 * np.abs(w).max()
    # metrics.json scores the split-trained model either way, and says so.
    m_refit, m_kept = (json.loads((d / "metrics.json").read_text()) for d in (refit, kept))
    assert m_refit["model"]["recall@20"] == pytest.approx(m_kept["model"]["recall@20"], abs=1e-6)
    assert "before the refit" in m_refit["evaluated"]["scored"] and m_refit["evaluated"]["split"]["split"] == "random"


def test_seen_entries_are_the_whole_input_and_trained_entries_the_split(graph, models):
    _, data = graph
    everything = _entries(data.csr())
    split = random_holdout(data, fraction=0.2, seed=0)
    for name in ("refit", "kept"):
        assert _entries(ALS.load(models / name).train_) == everything, name
    kept = models / "kept"
    on = _cfg(kept)["trained_on"]
    assert on == {
        "part": "the split's training part",
        "nnz": split.train.nnz,
        "refit": False,
        "split": _cfg(kept)["split"],
        "entries": "trained.npz",
    }
    with np.load(kept / "trained.npz") as z:
        assert int(z["indptr"][-1]) == split.train.nnz


@pytest.mark.parametrize("name", ["refit", "kept", "held-refit", "held-kept"])
def test_recommend_excludes_every_input_entry(graph, models, capsys, name):
    _, data = graph
    rows = np.unique(data.rows)[:25]
    capsys.readouterr()
    assert main(["recommend", str(models / name), *map(str, rows), "-k", "20"]) == 0
    lines = [json.loads(s) for s in capsys.readouterr().out.strip().splitlines()]
    assert [int(r["row"]) for r in lines] == rows.tolist()
    had = {(r, c) for r, c in zip(data.rows.tolist(), data.cols.tolist())}
    recs = [(int(r["row"]), e["id"]) for r in lines for e in r["recommendations"]]
    assert len(recs) == 25 * 20 and not had & set(recs)


# ---------------------------------------------------------------------------------- evaluate
def test_evaluate_refuses_a_refit_model_and_allow_overlap_flags_it(models, tmp_path, capsys):
    with pytest.raises(UsageError, match=r"100\.0 %.*refit on all input.*--no-refit.*--allow-overlap"):
        main(["evaluate", str(models / "refit")])
    with pytest.raises(UsageError, match="refit on all input"):
        main(["evaluate", str(models / "held-refit")])  # held-out rows were trained too
    capsys.readouterr()
    js = tmp_path / "m.json"
    assert main(["evaluate", str(models / "refit"), "--allow-overlap", "--json", str(js)]) == 0
    assert "WARNING" in capsys.readouterr().err
    got = json.loads(js.read_text())
    assert got["overlap"]["n_trained_on"] == got["overlap"]["n_test"] > 0


def test_evaluate_no_refit_model_on_its_split_and_refuses_another_seed(models, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # config.json's data path is absolute: any directory works
    for name in ("kept", "held-kept"):
        js = tmp_path / f"{name}.json"
        assert main(["evaluate", str(models / name), "--json", str(js)]) == 0
        first = json.loads((models / name / "metrics.json").read_text())
        assert json.loads(js.read_text())["model"]["recall@20"] == pytest.approx(first["model"]["recall@20"])
    with pytest.raises(UsageError, match=r"--split-seed 1 .*training part.*--split random --split-seed 0"):
        main(["evaluate", str(models / "kept"), "--split-seed", "1"])
    with pytest.raises(UsageError, match="--split heldout-rows --split-seed 0"):
        main(["evaluate", str(models / "held-kept"), "--split-seed", "3"])  # other rows held out: trained on


def test_the_overlap_is_found_from_the_stored_entries_not_the_flags(graph, models, tmp_path):
    """A no-refit folder whose trained.npz is replaced by all entries is refused on its own split."""
    folder = tmp_path / "m"
    shutil.copytree(models / "kept", folder)
    shutil.copy(folder / "train.npz", folder / "trained.npz")
    with pytest.raises(UsageError, match="test entries"):
        main(["evaluate", str(folder)])


def test_config_data_path_is_absolute(graph, tmp_path, monkeypatch):
    path, _ = graph
    monkeypatch.chdir(path.parent)
    assert main(["train", path.name, "--out", str(tmp_path / "m"), *SMALL, "--no-refit"]) == 0
    assert Path(_cfg(tmp_path / "m")["data"]["path"]) == path.resolve()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    res = _alsx("evaluate", str(tmp_path / "m"), cwd=elsewhere)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "recall@20" in res.stdout


# ----------------------------------------------------------------------------- damaged folders
def _damage(folder: Path, case: str) -> str:
    """Damages ``folder`` as ``case`` says; returns the file name the error must name."""
    d = 8
    if case == "missing-row-table":
        (folder / "row_embeddings.npy").unlink()
        return "row_embeddings.npy"
    if case == "garbage-config":
        (folder / "config.json").write_text('{"hparams": {"dim": 8,,')
        return "config.json"
    if case == "empty-config":
        (folder / "config.json").write_text("")
        return "config.json"
    if case == "config-not-object":
        (folder / "config.json").write_text("[1, 2]")
        return "config.json"
    if case == "wrong-dim":
        np.save(
            folder / "col_embeddings.npy",
            np.zeros((np.load(folder / "col_embeddings.npy").shape[0], d + 1), np.float32),
        )
        return "col_embeddings.npy"
    if case == "wrong-rows":
        w = np.load(folder / "row_embeddings.npy")
        np.save(folder / "row_embeddings.npy", w[:-3])
        return "row_embeddings.npy"
    if case == "garbage-table":
        (folder / "row_embeddings.npy").write_bytes(b"not a numpy file")
        return "row_embeddings.npy"
    if case == "missing-train":
        (folder / "train.npz").unlink()
        return "train.npz"
    if case == "garbage-train":
        (folder / "train.npz").write_bytes(b"PK\x03\x04 broken")
        return "train.npz"
    if case == "wrong-shape-train":
        with np.load(folder / "train.npz") as z:
            np.savez(
                folder / "train.npz",
                indptr=z["indptr"][:-5],
                indices=z["indices"],
                values=z["values"],
                n_cols=z["n_cols"],
            )
        return "train.npz"
    raise AssertionError(case)


DAMAGES = [
    "missing-row-table",
    "garbage-config",
    "empty-config",
    "config-not-object",
    "wrong-dim",
    "wrong-rows",
    "garbage-table",
    "missing-train",
    "garbage-train",
    "wrong-shape-train",
]


@pytest.mark.parametrize("case", DAMAGES)
def test_damaged_folder_names_the_file(models, tmp_path, case):
    folder = tmp_path / "m"
    shutil.copytree(models / "kept", folder)
    name = _damage(folder, case)
    with pytest.raises(ModelError, match=rf"{folder / name}: "):
        ALS.load(folder)
    for cmd in (["recommend", str(folder), "0"], ["evaluate", str(folder)]):
        with pytest.raises(ModelError, match=rf"{folder / name}: "):
            main(cmd)


def test_damaged_vocab_and_wrong_vocab_length(graph, tmp_path):
    x = community_graph(n_nodes=60, n_edges=600, n_communities=3, seed=1)
    csv = tmp_path / "e.csv"
    csv.write_text("u,i\n" + "".join(f"u{r},i{c}\n" for r, c in zip(x.rows, x.cols)))
    folder = tmp_path / "m"
    assert main(["train", str(csv), "--row", "u", "--col", "i", "--out", str(folder), *SMALL, "--split", "none"]) == 0
    ALS.load(folder)
    (folder / "col_vocab.npz").write_bytes(b"junk")
    with pytest.raises(ModelError, match=rf"{folder / 'col_vocab.npz'}: not a readable vocabulary"):
        ALS.load(folder)
    np.savez(folder / "col_vocab.npz", ids=np.array(["a", "b"]))
    with pytest.raises(ModelError, match=r"col_vocab.npz: 2 ids, but config.json's shape has"):
        ALS.load(folder)


@pytest.mark.parametrize("case", ["missing-row-table", "garbage-config", "wrong-dim", "missing-train"])
def test_damaged_folder_user_path(models, tmp_path, case):
    folder = tmp_path / "m"
    shutil.copytree(models / "kept", folder)
    name = _damage(folder, case)
    cmd = ["recommend", str(folder), "0"] if DAMAGES.index(case) % 2 else ["evaluate", str(folder)]
    res = _alsx(*cmd)
    assert res.returncode != 0
    assert f"{folder / name}:" in res.stderr, res.stderr[-2000:]


def test_no_such_model_folder(tmp_path):
    with pytest.raises(ModelError, match="no such model folder"):
        ALS.load(tmp_path / "nothing")


# --------------------------------------------------------------------------------- recommend ids
def test_row_indices_unit():
    from alsx.data.vocab import Vocab
    from alsx.serve.ids import row_indices

    assert row_indices(["2", "0"], None, 3, "M").tolist() == [2, 0]
    assert row_indices(["b", "a"], Vocab(np.array(["a", "b"])), 2, "M").tolist() == [1, 0]
    assert row_indices(["70"], Vocab(np.array([50, 70])), 2, "M").tolist() == [1]
    with pytest.raises(UsageError, match=r"'3' not in the model M \(its rows are 0..2\)"):
        row_indices(["3"], None, 3, "M")
    with pytest.raises(UsageError, match=r"'c' not in the model M$"):
        row_indices(["a", "c"], Vocab(np.array(["a", "b"])), 2, "M")
    with pytest.raises(UsageError, match=r"'x1': not integers"):
        row_indices(["x1"], Vocab(np.array([50, 70])), 2, "M")
    with pytest.raises(UsageError, match="beyond 64-bit"):
        row_indices([str(2**70)], Vocab(np.array([50, 70])), 2, "M")


def test_count_overlap_against_sets():
    from alsx.data.matrix import Interactions
    from alsx.folder import count_overlap

    rng = np.random.default_rng(0)
    keys = np.unique(rng.integers(0, 40 * 30, 500))
    x = Interactions(
        rows=(keys // 30).astype(np.int32),
        cols=(keys % 30).astype(np.int32),
        values=np.ones(len(keys), np.float32),
        shape=(40, 30),
    )
    trained = x.select(rng.random(x.nnz) < 0.6)
    test = x.select(rng.random(x.nnz) < 0.3)
    want = len(
        set(zip(trained.rows.tolist(), trained.cols.tolist())) & set(zip(test.rows.tolist(), test.cols.tolist()))
    )
    assert 0 < count_overlap(trained.csr(), test) == want
    assert count_overlap(trained.csr(), test.select(np.zeros(test.nnz, bool))) == 0


def test_recommend_unknown_and_non_integer_ids(models, tmp_path):
    folder = models / "kept"  # an index model (npz input): rows 0..n-1
    n = np.load(folder / "row_embeddings.npy").shape[0]
    with pytest.raises(UsageError, match=rf"'{n}', '-1' not in the model .*rows are 0..{n - 1}"):
        main(["recommend", str(folder), "0", str(n), "-1"])
    with pytest.raises(UsageError, match=r"'u7', '1.5': not integers"):
        main(["recommend", str(folder), "u7", "1.5"])
    with pytest.raises(UsageError, match="-k must be >= 1"):
        main(["recommend", str(folder), "0", "-k", "0"])
    res = _alsx("recommend", str(folder), "3", "nope")
    assert res.returncode != 0 and "'nope'" in res.stderr


def test_recommend_ids_of_a_vocabulary(tmp_path, capsys):
    x = community_graph(n_nodes=60, n_edges=600, n_communities=3, seed=1)
    csv = tmp_path / "e.csv"
    csv.write_text("u,i\n" + "".join(f"{10 * r + 7},i{c}\n" for r, c in zip(x.rows, x.cols)))  # int ids, mapped
    folder = tmp_path / "m"
    assert (
        main(
            [
                "train",
                str(csv),
                "--row",
                "u",
                "--col",
                "i",
                "--ids",
                "map",
                "--out",
                str(folder),
                *SMALL,
                "--split",
                "none",
            ]
        )
        == 0
    )
    assert ALS.load(folder).row_vocab_.kind == "int"
    capsys.readouterr()
    user = str(10 * int(x.rows[0]) + 7)
    assert main(["recommend", str(folder), user, "-k", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["row"] == int(user)  # the original id, a number stays a number
    with pytest.raises(UsageError, match=r"'8' not in the model"):
        main(["recommend", str(folder), user, "8"])
    with pytest.raises(UsageError, match=r"'abc': not integers"):
        main(["recommend", str(folder), "abc"])


# ------------------------------------------------------------------------------ real data, as a user
@pytest.mark.skipif(not ML100K.exists(), reason=f"shared data set not present at {ML100K}")
def test_ml100k_saved_model_serves_all_input(tmp_path, capsys):
    z = np.load(ML100K)
    had = set(zip(z["rows"].tolist(), z["cols"].tolist()))
    fast = ["--dim", "16", "--epochs", "3"]
    refit, kept = tmp_path / "refit", tmp_path / "kept"
    res = _alsx("train", str(ML100K), "--out", str(refit), *fast)  # the default: --split random, refit
    assert res.returncode == 0, res.stderr[-3000:]
    assert _cfg(refit)["trained_on"]["nnz"] == len(z["rows"]) == 100_000
    with np.load(refit / "train.npz") as t:
        assert int(t["indptr"][-1]) == 100_000
    res = _alsx("recommend", str(refit), *map(str, range(50)), "-k", "10")
    assert res.returncode == 0, res.stderr[-3000:]
    recs = [(int(r["row"]), e["id"]) for r in map(json.loads, res.stdout.splitlines()) for e in r["recommendations"]]
    assert len(recs) == 500 and not had & set(recs)  # main: 118 of these 500 were in the input
    res = _alsx("evaluate", str(refit))
    assert res.returncode != 0 and "refit on all input" in res.stderr and "--allow-overlap" in res.stderr
    # The split-trained tables (--no-refit, here in-process) differ and exclude the same inputs.
    assert main(["train", str(ML100K), "--out", str(kept), *fast, "--no-refit"]) == 0
    with np.load(kept / "trained.npz") as t:
        assert int(t["indptr"][-1]) == 80_000 == _cfg(kept)["trained_on"]["nnz"]
    w, wk = np.load(refit / "row_embeddings.npy"), np.load(kept / "row_embeddings.npy")
    assert w.shape == wk.shape and np.abs(w - wk).max() > 0.1 * np.abs(w).max()
    capsys.readouterr()
    assert main(["recommend", str(kept), *map(str, range(50)), "-k", "10"]) == 0
    recs = [
        (int(r["row"]), e["id"])
        for r in map(json.loads, capsys.readouterr().out.splitlines())
        for e in r["recommendations"]
    ]
    assert len(recs) == 500 and not had & set(recs)
    with pytest.raises(UsageError, match="--split-seed 1"):  # main scored this at Recall@20 0.618, no warning
        main(["evaluate", str(kept), "--split-seed", "1"])
