"""``alsx.ALS`` keeps the scikit-learn estimator contract (issue 16 section 5) and fits what a user
hands it (issue 18): DataFrames by column name, scipy.sparse, Interactions; a callback may stop it."""

from __future__ import annotations

import inspect
import pickle

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.base import clone
from sklearn.exceptions import NotFittedError as SklearnNotFitted
from sklearn.utils.validation import check_is_fitted

from alsx import ALS
from alsx.callbacks import StopTraining
from alsx.config import DEFAULTS
from alsx.core.backends import make_engine
from alsx.data.ingest import load_interactions
from alsx.errors import UsageError
from alsx.serve.estimator import NotFittedError

SMALL = dict(dim=4, epochs=3, reg=0.05, progress=False)


@pytest.fixture(scope="module")
def matrix() -> sp.csr_matrix:
    return sp.random(40, 30, density=0.2, random_state=1, format="csr")


@pytest.fixture(scope="module")
def fitted(matrix) -> ALS:
    return ALS(**SMALL).fit(matrix)


# ------------------------------------------------------------------ scikit-learn conventions
def test_init_stores_its_arguments_and_nothing_else():
    names = [p for p in inspect.signature(ALS.__init__).parameters if p != "self"]
    model = ALS(dim=0, solver="nonsense", epochs=-1, packing=None)  # no validation at construction
    assert sorted(vars(model)) == sorted(names)
    assert model.get_params() == {n: getattr(model, n) for n in names}
    assert model.dim == 0 and model.solver == "nonsense"
    # the defaults are config.py's, whatever they are
    for field in (
        "dim",
        "reg",
        "unobserved_weight",
        "unobserved_ratio",
        "reg_ratio",
        "nu",
        "solver",
        "cg_steps",
        "block_size",
        "dtype",
        "init_scale",
        "init",
    ):
        assert getattr(ALS(), field) == DEFAULTS[field], field
    with pytest.raises(SklearnNotFitted):
        check_is_fitted(ALS())


def test_validation_happens_in_fit(matrix):
    for bad, word in (
        ({"dim": 0}, "dim"),
        ({"solver": "nonsense"}, "solver"),
        ({"epochs": -1}, "epochs"),
        ({"backend": "tpu9"}, "backend"),
    ):
        with pytest.raises(ValueError, match=word):
            ALS(**{**SMALL, **bad}).fit(matrix)


def test_get_set_params_and_clone(fitted):
    model = ALS(dim=16, alpha=2.0)
    assert model.set_params(dim=8, epochs=2) is model and model.get_params()["dim"] == 8
    with pytest.raises(ValueError, match="invalid parameter 'rank'"):
        model.set_params(rank=3)
    copy = clone(fitted)
    assert copy.get_params() == fitted.get_params() and not hasattr(copy, "row_embeddings_")
    assert repr(copy) == "ALS(dim=4, reg=0.05, epochs=3, progress=False)"


def test_learned_attributes_end_in_underscore_and_fit_is_checked(fitted):
    check_is_fitted(fitted)
    learned = set(vars(fitted)) - set(fitted.get_params())
    assert {"row_embeddings_", "col_embeddings_", "history_", "hparams_", "train_"} <= learned
    assert all(a.endswith("_") or a.startswith("_") for a in learned), learned
    assert fitted.hparams is fitted.hparams_ and fitted.hparams_.dim == 4
    for call in (lambda m: m.recommend([0]), lambda m: m.similar_items([0]), lambda m: m.hparams):
        with pytest.raises(NotFittedError, match="not fitted: call fit"):
            call(ALS())
    assert issubclass(NotFittedError, ValueError) and issubclass(NotFittedError, AttributeError)


def test_a_fitted_model_pickles_without_its_engine(fitted, matrix):
    assert fitted.engine_ is not None  # the training engine (thread queues: not picklable) ...
    back = pickle.loads(pickle.dumps(fitted))
    assert back.engine_ is None and back.state_ is None  # ... is dropped, the tables kept
    np.testing.assert_array_equal(back.row_embeddings_, fitted.row_embeddings_)
    assert back.history_ == fitted.history_ and back.get_params() == fitted.get_params()
    for a, b in zip(back.recommend([0, 3], k=5), fitted.recommend([0, 3], k=5), strict=True):
        np.testing.assert_array_equal(a, b)
    device_only = ALS(**SMALL).fit(matrix, gather_tables=False)
    with pytest.raises(TypeError, match="gather_tables=False"):
        pickle.dumps(device_only)


# ------------------------------------------------------------------ inputs
def test_fit_reads_a_dataframe_by_column_name():
    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {
            "ts": np.arange(300),
            "item": rng.integers(100, 130, 300),
            "user": [f"u{i}" for i in rng.integers(0, 40, 300)],
            "rating": rng.integers(1, 6, 300).astype(float),
        }
    )
    df = df.drop_duplicates(["user", "item"])
    model = ALS(**SMALL, alpha=1.0).fit(df, row="user", col="item", value="rating")
    assert model.row_vocab_.kind == "str" and set(model.row_vocab_.ids) == set(df.user)
    assert set(model.col_vocab_.ids.tolist()) == set(df.item.tolist())  # the item column, not the first
    u = model.row_vocab_.encode(["u3"])[0]
    cols, conf = model.train_.row(int(u))
    want = df[df.user == "u3"].sort_values("item")
    assert model.col_vocab_.decode(cols).tolist() == want.item.tolist()
    np.testing.assert_allclose(conf, 1.0 + want.rating.to_numpy())  # confidence 1 + alpha * value
    ids, _ = model.recommend(["u3"], k=3)
    assert ids.dtype.kind == "i" and set(ids[0]) <= set(df.item) and not set(ids[0]) & set(want.item)
    with pytest.warns(UserWarning, match="without ALS\\(alpha"):
        ALS(**SMALL).fit(df, row="user", col="item", value="rating")


def test_fit_accepts_scipy_and_interactions(matrix):
    data, _ = load_interactions(matrix)
    a, b = ALS(**SMALL).fit(matrix), ALS(**SMALL).fit(data)
    np.testing.assert_array_equal(a.row_embeddings_, b.row_embeddings_)
    with pytest.raises(UsageError, match="name DataFrame columns"):
        ALS(**SMALL).fit(data, row="user")


# ------------------------------------------------------------------ callbacks
def test_stop_training_in_a_callback_keeps_the_model(matrix):
    def stop_at_2(record, state):
        if record["epoch"] == 2:
            raise StopTraining("enough")

    model = ALS(**{**SMALL, "epochs": 5}).fit(matrix, callback=stop_at_2)
    assert [r["epoch"] for r in model.history_] == [1, 2]
    assert model.stopped_ == {"epoch": 2, "reason": "enough", "tables_from_epoch": None}
    two = ALS(**{**SMALL, "epochs": 2}).fit(matrix)
    np.testing.assert_array_equal(model.row_embeddings_, two.row_embeddings_)
    assert model.recommend([0], k=3)[0].shape == (1, 3)

    kept = {}

    def engine(*args):  # what early stopping holds: the engine, to copy a state's tables to the host
        kept["engine"] = make_engine(*args)
        return kept["engine"]

    def best_is_1(record, state):
        if record["epoch"] == 1:
            kept["tables"] = tuple(np.array(t) for t in kept["engine"].to_numpy(state))
        if record["epoch"] == 3:
            raise StopTraining("no better", tables=kept["tables"], epoch=1)

    model = ALS(**{**SMALL, "epochs": 5}, engine_factory=engine).fit(matrix, callback=best_is_1)
    one = ALS(**{**SMALL, "epochs": 1}).fit(matrix)
    assert model.stopped_["tables_from_epoch"] == 1 and len(model.history_) == 3
    np.testing.assert_array_equal(model.row_embeddings_, one.row_embeddings_)
    np.testing.assert_array_equal(model.col_embeddings_, one.col_embeddings_)
