"""End to end through the CLI and the estimator: outputs, id mapping, seen-item exclusion, divergence."""

from __future__ import annotations

import json

import numpy as np
import pytest

from alsx.cli import main
from alsx.data.synthetic import community_graph
from alsx.errors import TrainingError
from alsx.model import ALS


@pytest.fixture(scope="module")
def csv_file(tmp_path_factory):
    """A small user/item CSV with string ids."""
    x = community_graph(n_nodes=300, n_edges=4000, n_communities=6, seed=3)
    path = tmp_path_factory.mktemp("data") / "events.csv"
    lines = ["user,item"] + [f"u{r},i{c}" for r, c in zip(x.rows, x.cols)]
    path.write_text("\n".join(lines) + "\n")
    return path, x


def test_train_writes_tables_vocab_and_metrics(tmp_path, csv_file):
    path, x = csv_file
    out = tmp_path / "model"
    assert (
        main(
            [
                "train",
                str(path),
                "--row",
                "user",
                "--col",
                "item",
                "--out",
                str(out),
                "--dim",
                "8",
                "--epochs",
                "3",
                "--split",
                "random",
                "--solver",
                "cholesky",
            ]
        )
        == 0
    )
    w = np.load(out / "row_embeddings.npy")
    h = np.load(out / "col_embeddings.npy")
    assert w.dtype == np.float32 and w.shape == (len(np.unique(x.rows)), 8)
    assert h.shape == (len(np.unique(x.cols)), 8)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["hparams"]["dim"] == 8 and cfg["split"]["split"] == "random"
    hist = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in hist] == [1, 2, 3]
    assert all(set(r["loss"]) >= {"observed", "unobserved", "regularisation", "total"} for r in hist)
    # The exact solver never increases the objective.
    totals = [r["loss"]["total"] for r in hist]
    assert all(b <= a * (1 + 1e-6) for a, b in zip(totals, totals[1:]))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"]["recall@20"] > metrics["popularity"]["recall@20"]

    model = ALS.load(out)
    assert model.row_vocab_.decode(np.array([0]))[0].startswith("u")
    np.testing.assert_array_equal(model.row_embeddings_, w)


def test_recommend_maps_ids_and_excludes_seen(tmp_path, csv_file, capsys):
    path, x = csv_file
    out = tmp_path / "model"
    main(
        [
            "train",
            str(path),
            "--row",
            "user",
            "--col",
            "item",
            "--out",
            str(out),
            "--dim",
            "8",
            "--epochs",
            "2",
            "--split",
            "none",
        ]
    )
    capsys.readouterr()
    user = f"u{x.rows[0]}"
    assert main(["recommend", str(out), user, "-k", "5"]) == 0
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    seen = {f"i{c}" for c in x.cols[x.rows == x.rows[0]]}
    got = [r["id"] for r in rec["recommendations"]]
    assert rec["row"] == user and len(got) == 5
    assert not seen & set(got)
    scores = [r["score"] for r in rec["recommendations"]]
    assert scores == sorted(scores, reverse=True)


def test_evaluate_reproduces_training_metrics(tmp_path, csv_file, capsys):
    path, _ = csv_file
    out = tmp_path / "model"
    # --no-refit: the default refit on all input overlaps every split (evaluate refuses it: test_model_outputs)
    main(
        [
            "train",
            str(path),
            "--row",
            "user",
            "--col",
            "item",
            "--out",
            str(out),
            "--dim",
            "8",
            "--epochs",
            "2",
            "--split",
            "random",
            "--split-seed",
            "4",
            "--no-refit",
        ]
    )
    js = tmp_path / "m.json"
    assert main(["evaluate", str(out), "--json", str(js)]) == 0
    again = json.loads(js.read_text())
    first = json.loads((out / "metrics.json").read_text())
    assert again["model"]["recall@20"] == pytest.approx(first["model"]["recall@20"])


def test_npz_indices_are_kept_as_given(tmp_path):
    rows = np.array([0, 0, 5, 5, 9], np.int32)
    cols = np.array([1, 3, 1, 2, 0], np.int32)
    path = tmp_path / "m.npz"
    np.savez(path, rows=rows, cols=cols, shape=np.array([12, 4]))
    out = tmp_path / "model"
    main(["train", str(path), "--out", str(out), "--dim", "4", "--epochs", "1", "--split", "none"])
    w = np.load(out / "row_embeddings.npy")
    assert w.shape == (12, 4)  # row i is input index i, empty rows included
    assert np.all(w[[1, 2, 3, 4, 6, 7, 8, 10, 11]] == 0) and np.all(np.abs(w[[0, 5, 9]]).sum(1) > 0)


def test_demo_beats_popularity_and_writes_plot(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--nodes", "2000", "--edges", "20000", "--epochs", "3", "--dim", "16", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"]["recall@20"] > 2 * metrics["popularity"]["recall@20"]
    png = (out / "training.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert str(out) in capsys.readouterr().out


def test_divergence_stops_with_the_epoch(csv_file):
    _, x = csv_file
    # No regularisation and no Gramian term: rows with fewer entries than d are singular.
    model = ALS(dim=32, reg=0.0, unobserved_weight=0.0, solver="cholesky", epochs=3, progress=False)
    with pytest.raises(FloatingPointError, match="epoch 1") as info:
        model.fit(x)
    assert isinstance(info.value, TrainingError) and info.value.exit_code == 5  # `alsx train` exits 5
    msg = str(info.value)
    assert "rows of the row table (first: row" in msg and "give --reg > 0" in msg, msg
    # ... and the remedy it names is the measured one: any reg > 0 trains this input to the end.
    ALS(dim=32, reg=1e-3, unobserved_weight=0.0, solver="cholesky", epochs=3, progress=False).fit(x)


def test_loss_every_skips_the_loss_but_not_training_or_divergence_checks(csv_file):
    _, x = csv_file
    kw = dict(dim=8, epochs=3, progress=False, solver="cholesky")
    every = ALS(**kw).fit(x)
    sparse = ALS(loss_every=2, **kw).fit(x)
    assert [("loss" in r) for r in every.history_] == [True, True, True]
    assert [("loss" in r) for r in sparse.history_] == [False, True, True]  # epoch 2, and the last
    assert sparse.history_[1]["loss"] == every.history_[1]["loss"]
    np.testing.assert_array_equal(sparse.row_embeddings_, every.row_embeddings_)
    never = ALS(loss_every=0, **kw).fit(x)
    assert not any("loss" in r for r in never.history_)
    with pytest.raises(FloatingPointError, match="epoch 1"):  # found from the tables alone
        ALS(dim=32, reg=0.0, unobserved_weight=0.0, solver="cholesky", epochs=3, progress=False, loss_every=0).fit(x)
    with pytest.raises(ValueError, match="loss_every"):  # checked by fit (scikit-learn: __init__ only stores)
        ALS(loss_every=-1).fit(x)
