"""Hyper-parameter search for iALS (``alsx tune``) on a validation split.

It carves its validation entries from the *training* input only (a per-row holdout of it,
:func:`validation_split`): the test part of a split is never trained on, scored or looked at.

>>> result = tune(split.train, dim=64, epochs=15, minutes=5)     # doctest: +SKIP
>>> ALS(**result.params).fit(everything)                         # doctest: +SKIP

The search is Optuna's TPE sampler with a pruner by epoch (Hyperband or successive halving): each trial
reports its validation metric (on a fixed sample of the carve's rows) after every evaluated epoch and stops when
the pruner says so.  Trials share one engine per (dim, solver): the packed input and the compiled kernels stay,
``engine.set_hparams`` swaps lambda, alpha0, nu, CG steps and the initial scale.  After the search, the best
reg_ratio is moved from the carve's amount of data to all of the input (:func:`alsx.validation.size_corrected`).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
import types
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from alsx.config import (
    AUTO,
    DEFAULT_TRIALS,
    DEFAULTS,
    PICK_CARVES,
    PICK_TRIALS,
    PRUNERS,
    SEARCH_EVAL_ROWS,
    HParams,
    Packing,
    resolve_weights,
)
from alsx.data.split import Split
from alsx.errors import DivergenceError
from alsx.model import ALS, as_interactions
from alsx.validation import (  # noqa: F401  (the names alsx.tune has always offered)
    METRIC,
    METRICS,
    VALIDATION_FRACTION,
    EarlyStopping,
    SizeCorrection,
    mean_curve,
    parse_metric,
    scored_sample,
    size_corrected,
    validation_curve,
    validation_metric,
    validation_split,
)

TUNED = ("unobserved_ratio", "reg_ratio", "nu", "init_scale", "cg_steps")  # searched; dim too with max_dim
# The first trials: alsx's defaults, and plain (nu = 0) regularisation, the other regime of the space (implicit's
# optimum on ml1m and citeulike_a, reg = 20-30 alpha0 at nu = 0: benchmarks/results_tune.md).
STARTS = ({k: DEFAULTS[k] for k in TUNED}, {**{k: DEFAULTS[k] for k in TUNED}, "nu": 0.0, "reg_ratio": 20.0})
EVALUATIONS = 5  # validation evaluations per trial when eval_every is 0 (auto)
CORRECTION_FITS = 5  # fits the size correction takes at least (validation.size_corrected); the budget keeps them
# The final pick (config.PICK_TRIALS, PICK_CARVES): near the optimum one carve's ranking is noise.  On citeulike_a at
# d=256 the carve's top 10 trials lay within 0.001 of each other and its first was the worst of them on the test part;
# the mean over 3 carves ranked them better (benchmarks/results_tune.md).
CORRECTION_SHARE = 0.4  # at most this share of a --minutes budget is kept for these fits


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """Ranges searched: (low, high), all but nu and cg_steps on log scales.

    alpha0 and reg are searched relative to the data (``config.resolve_weights``): alpha0 =
    unobserved_ratio * density, reg = reg_ratio * alpha0, so one range fits a web graph (alpha0 ~ 1e-4)
    and a movie data set (~0.3) alike.  reg_ratio spans both regimes of nu: ~0.01-0.1 at nu = 1, ~10-30 at nu = 0.
    """

    unobserved_ratio: tuple[float, float] = (0.3, 100.0)
    reg_ratio: tuple[float, float] = (1e-3, 100.0)
    nu: tuple[float, float] = (0.0, 1.0)
    init_scale: tuple[float, float] = (0.01, 1.0)
    cg_steps: tuple[int, int] = (2, 6)

    def suggest(self, trial, dims: tuple[int, ...]) -> dict:
        """One point: the searched names of TUNED (and dim from ``dims`` when there is a choice)."""
        return {
            "dim": trial.suggest_categorical("dim", list(dims)) if len(dims) > 1 else dims[0],
            "unobserved_ratio": trial.suggest_float("unobserved_ratio", *self.unobserved_ratio, log=True),
            "reg_ratio": trial.suggest_float("reg_ratio", *self.reg_ratio, log=True),
            "nu": trial.suggest_float("nu", *self.nu),
            "init_scale": trial.suggest_float("init_scale", *self.init_scale, log=True),
            "cg_steps": trial.suggest_int("cg_steps", *self.cg_steps),
        }


def resolved(point: dict, nnz: int, shape: tuple[int, int], **fields) -> HParams:
    """The HParams of a searched point (unobserved_ratio and reg_ratio turned into alpha0 and reg)."""
    hp = {k: v for k, v in point.items() if k not in ("unobserved_ratio", "reg_ratio")}
    hp["reg"], hp["unobserved_weight"] = resolve_weights(
        AUTO, AUTO, nnz, shape, point["unobserved_ratio"], point["reg_ratio"]
    )
    return HParams(**hp, **fields)


def dims_up_to(dim: int, max_dim: int | None) -> tuple[int, ...]:
    """dim, 2 dim, 4 dim, ... up to max_dim (just dim without a cap)."""
    if max_dim is None or max_dim <= dim:
        return (dim,)
    out = [dim]
    while out[-1] * 2 <= max_dim:
        out.append(out[-1] * 2)
    return tuple(out)


def make_pruner(name: str, every: int, epochs: int):
    import optuna

    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=every, max_resource=epochs, reduction_factor=3)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=every, reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"pruner must be one of {PRUNERS}, got {name!r}")


@dataclasses.dataclass
class TuneResult:
    """What :func:`tune` found.

    Attributes:
      params: ALS keyword arguments of the best trial (HParams fields, ``epochs`` = its best
        epoch, ``alpha``, ``seed``): ``ALS(**params)`` trains it.
      value: its validation ``metric`` in the search (the first carve); best_trial: its number.
      trials: one dict per trial (see :func:`trial_rows`).
      study: the optuna Study; seconds: wall time of the search and the size correction.
      top: the trials of the final pick: {trial: best of its mean validation curve over the carves}.
      correction: what the size correction measured (None without it); params['reg_ratio'] is its result.
      scored_rows: (validation rows each evaluation scored, validation rows of the carve).
      model: with ``refit``, an ALS trained on all of ``data`` with ``params``.
    """

    params: dict
    value: float
    metric: str
    best_trial: int
    trials: list[dict]
    study: Any
    seconds: float
    correction: SizeCorrection | None = None
    top: dict[int, float] = dataclasses.field(default_factory=dict)
    scored_rows: tuple[int, int] = (0, 0)
    model: ALS | None = None


def tune(
    data: Any,
    *,
    dim: int = 64,
    epochs: int = 15,
    trials: int | None = None,
    minutes: float | None = None,
    metric: str = METRIC,
    max_dim: int | None = None,
    solver: str = "cg",
    eval_every: int = 0,
    validation_fraction: float = VALIDATION_FRACTION,
    eval_rows: int | None = SEARCH_EVAL_ROWS,
    seed: int = 0,
    pruner: str = "hyperband",
    pick_carves: int = PICK_CARVES,
    backend: str = "auto",
    alpha: float | None = None,
    space: SearchSpace = SearchSpace(),
    size_correction: bool = True,
    refit: bool = False,
    progress: bool = True,
) -> TuneResult:
    """Searches iALS hyper-parameters on a validation split carved from ``data``.

    Args:
      data: the training input (Interactions, scipy.sparse, DataFrame); pass a split's
        ``train`` to keep its test part unseen: nothing else is read.
      dim: embedding dimension (the smallest tried with ``max_dim``).
      epochs: most epochs per trial; the best epoch of the best trial becomes ``params['epochs']``.
      trials, minutes: budget (default DEFAULT_TRIALS trials); with both, whichever ends first.
        A trial running when the time is up finishes.  The size correction's fits count in
        ``minutes``: the search ends early enough to leave time for them.
      metric: 'recall@20', 'ndcg@20', ... maximised on the validation split.
      max_dim: also search dim in dim, 2 dim, ... <= max_dim (one engine per dim).
      eval_every: evaluate (and report to the pruner) every N epochs and after the last; 0: about
        EVALUATIONS times per trial (a full-ranking evaluation costs more than an epoch).
      validation_fraction: share of each row of ``data`` held out for validation.
      eval_rows: score at most this many validation rows, the same seeded sample in every trial and
        in the size correction (:func:`alsx.validation.scored_sample`; None or 0: all of them).
      pruner: 'hyperband', 'halving' (successive halving) or 'none'.
      pick_carves: re-score the best PICK_TRIALS trials on this many more carves and keep the best mean
        validation curve (its best epoch too); 0: the search's best trial.
      size_correction: move the best reg_ratio from the carve's amount of data to all of ``data``
        (:func:`alsx.validation.size_corrected`; ``result.correction``).
      refit: also train the best configuration on all of ``data`` (``result.model``).
    """
    import optuna

    from alsx.core.backends import make_engine

    parse_metric(metric)
    if eval_every < 0 or epochs < 1:
        raise ValueError(f"epochs must be >= 1 and eval_every >= 0, got {epochs} and {eval_every}")
    eval_every = eval_every or max(1, epochs // EVALUATIONS)
    if trials is None and minutes is None:
        trials = DEFAULT_TRIALS
    x = as_interactions(data)
    carve = validation_split(x, validation_fraction, seed)
    val = scored_sample(carve, eval_rows, seed)
    dims = dims_up_to(dim, max_dim)
    engines: dict[tuple[int, int], Any] = {}

    def engine_for(hp: HParams, carve: Split):
        key = (hp.dim, id(carve))
        if key not in engines:  # else same shapes: validation_curve swaps the objective, keeps input and programs
            engines[key] = make_engine(carve.train.csr(alpha), carve.train.csc(alpha), hp, Packing(), backend=backend)
        return engines[key]

    def objective(trial) -> float:
        hp = resolved(space.suggest(trial, dims), val.train.nnz, val.train.shape, solver=solver)
        trial.set_user_attr("reg", hp.reg)
        trial.set_user_attr("unobserved_weight", hp.unobserved_weight)
        t0, curve = time.perf_counter(), []

        def report(epoch: int, value: float) -> None:
            curve.append((epoch, value))
            trial.set_user_attr("curve", curve)
            trial.set_user_attr("seconds", time.perf_counter() - t0)
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch}")

        try:
            validation_curve(engine_for(hp, val), hp, val, epochs, eval_every, seed, metric, alpha, report)
        except (FloatingPointError, DivergenceError):  # diverged: a failed trial (NaN), the search goes on
            return float("nan")
        best_epoch, best = max(curve, key=lambda ev: ev[1])
        trial.set_user_attr("best_epoch", best_epoch)
        return best

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=make_pruner(pruner, eval_every, epochs),
    )
    for start in STARTS:  # trial 0: alsx's defaults (the search never returns worse on validation); 1: nu = 0
        study.enqueue_trial(start | ({"dim": dim} if len(dims) > 1 else {}))
    bar = tqdm(total=trials, desc="alsx tune", unit="trial", disable=not progress)
    t0 = time.perf_counter()

    def on_trial(study, trial) -> None:
        bar.update(1)
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if done:
            bar.set_postfix({f"best {metric}": f"{study.best_value:.4f}", "trial": study.best_trial.number})
        if minutes is not None and done and (fits := after_search()):  # keep time for the pick's and correction's
            keep = min(CORRECTION_SHARE * 60.0 * minutes, fits * trial_seconds())
            if time.perf_counter() - t0 + trial_seconds() > 60.0 * minutes - keep:  # the next trial would eat it
                study.stop()

    def after_search() -> int:  # fits at least, after the search
        return PICK_TRIALS * pick_carves + (CORRECTION_FITS if size_correction else 0)

    def trial_seconds() -> float:  # of a full trial, median
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and "seconds" in t.user_attrs]
        return float(np.median([t.user_attrs["seconds"] for t in done])) if done else 0.0

    try:
        study.optimize(
            objective, n_trials=trials, timeout=None if minutes is None else 60.0 * minutes, callbacks=[on_trial]
        )
    finally:
        bar.close()
    deadline = None if minutes is None else t0 + 60.0 * minutes  # past it the pick and the scans stop
    best = study.best_trial  # ValueError when no trial completed
    best_epoch, top = int(best.user_attrs["best_epoch"]), {}
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and math.isfinite(t.value)]
    if pick_carves and len(complete) > 1:
        left = CORRECTION_FITS if size_correction else 0
        candidates = sorted(complete, key=lambda t: -t.value)[:PICK_TRIALS]
        more = [validation_split(x, validation_fraction, seed + 1 + j) for j in range(pick_carves)]
        pbar = tqdm(total=len(more) * len(candidates), desc="alsx tune: top trials", unit="fit", disable=not progress)

        def rescore(t, c: Split) -> list[tuple[int, float]]:
            p = resolved({"dim": dim, **t.params}, c.train.nnz, c.train.shape, solver=solver)
            try:
                return validation_curve(engine_for(p, c), p, c, epochs, eval_every, seed, metric, alpha)
            except (FloatingPointError, DivergenceError):
                return [(e, -math.inf) for e, _ in t.user_attrs["curve"]]
            finally:
                pbar.update(1)

        curves = {t.number: [t.user_attrs["curve"]] for t in candidates}
        try:
            for c in (scored_sample(c, eval_rows, seed) for c in more):  # a whole carve, or none, before the deadline
                if deadline is not None and time.perf_counter() + (len(candidates) + left) * trial_seconds() > deadline:
                    break
                for t in candidates:
                    curves[t.number].append(rescore(t, c))
        finally:
            pbar.close()
        means = {n: mean_curve(cs) for n, cs in curves.items()}
        top = {n: max(v for _, v in m) for n, m in means.items()}
        best = study.trials[max(top, key=top.get)]
        best_epoch = max(means[best.number], key=lambda ev: ev[1])[0]
    point = {"dim": dim, **best.params}
    hp = resolved(point, val.train.nnz, val.train.shape, solver=solver)
    correction = None
    if size_correction:
        carve_b = scored_sample(validation_split(val.train, validation_fraction, seed), eval_rows, seed)  # of A
        cbar = tqdm(desc="alsx tune: size correction", unit="fit", disable=not progress)

        def score(carve: Split):
            def fit(reg_ratio: float) -> float:
                p = resolved({**point, "reg_ratio": reg_ratio}, carve.train.nnz, carve.train.shape, solver=solver)
                try:
                    curve = validation_curve(engine_for(p, carve), p, carve, epochs, eval_every, seed, metric, alpha)
                except (FloatingPointError, DivergenceError):
                    return float("nan")
                finally:
                    cbar.update(1)
                return max(v for _, v in curve)

            return fit

        try:  # the best trial is the scan's middle point on the carve: same objective, start and epochs
            correction = size_corrected(
                best.params["reg_ratio"], score(val), score(carve_b), {0.0: best.value}, deadline=deadline
            )
        finally:
            cbar.close()
    seconds = time.perf_counter() - t0
    # 'auto' weights with the best ratios: a fit on all of ``data`` (denser than the validation carve) keeps them
    params = {
        **dataclasses.asdict(hp),
        "reg": AUTO,
        "unobserved_weight": AUTO,
        "unobserved_ratio": best.params["unobserved_ratio"],
        "reg_ratio": best.params["reg_ratio"] if correction is None else correction.corrected,
        "epochs": best_epoch,
        "alpha": alpha,
        "seed": seed,
    }
    model = None
    if refit:
        model = ALS(**params, backend=backend, progress=progress).fit(x)
    return TuneResult(
        params=params,
        value=float(best.value),
        metric=metric,
        best_trial=best.number,
        trials=trial_rows(study, metric),
        study=study,
        seconds=seconds,
        correction=correction,
        top=top,
        scored_rows=(int(np.unique(val.test.rows).size), int(np.unique(carve.test.rows).size)),
        model=model,
    )


def trial_rows(study, metric: str) -> list[dict]:
    """One flat dict per trial: trial, state ('complete', 'pruned', 'fail'), the best ``metric``, best_epoch,
    seconds, the parameters, and ``epoch_N``: the metric after epoch N (NaN if not evaluated there)."""
    epochs = sorted({e for t in study.trials for e, _ in t.user_attrs.get("curve", [])})
    out = []
    for t in study.trials:
        curve = dict(t.user_attrs.get("curve", []))
        row = {
            "trial": t.number,
            "state": t.state.name.lower(),
            metric: max(curve.values()) if curve else float("nan"),
            "best_epoch": t.user_attrs.get("best_epoch", max(curve, key=curve.get) if curve else None),
            "seconds": t.user_attrs.get("seconds", float("nan")),
            **t.params,
            "reg": t.user_attrs.get("reg", float("nan")),  # alpha0 and reg of the ratios, on the validation carve
            "unobserved_weight": t.user_attrs.get("unobserved_weight", float("nan")),
        }
        row.update({f"epoch_{e}": curve.get(e, float("nan")) for e in epochs})
        out.append(row)
    return out


class _CallableModule(types.ModuleType):
    """``alsx.tune(...)`` calls :func:`tune`; ``alsx.tune`` stays this module (``import alsx.tune as t`` works)."""

    def __call__(self, *args, **kwargs) -> TuneResult:
        return tune(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
