"""The validation carve ``alsx tune`` and ``--early-stopping`` score on, the early-stopping callback, and
the data-size correction of the regularisation a search finds there.

A per-row holdout (:func:`validation_split`) trains every trial on a share 1 - f of the input, so
the search finds the best lambda for *less* data than the final fit gets.  That best lambda moves
with the amount of data: on ml1m at d=64 each 20 % cut of the training rows doubles the best
reg_ratio (0.01 on the whole training part, 0.02 on the carve, 0.04 on a carve of the carve;
benchmarks/results_tune.md), and iALS's quality falls off a cliff just above that optimum, so the
carve's optimum loses 5 % Recall@20 on the test part.  :func:`size_corrected` measures the move
instead of assuming it: it scans reg_ratio around the search's best point on the carve (A, a share
1 - f of the input) and on a carve of the carve (B, (1 - f)^2), and takes one more step of the same
size to the whole input, log s(all) = 2 log s(A) - log s(B) (the shares are equally spaced in log).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from alsx.callbacks import StopTraining
from alsx.config import METRIC, VALIDATION_FRACTION, HParams
from alsx.data.matrix import Interactions
from alsx.data.split import Split, random_holdout

if TYPE_CHECKING:  # the model (JAX) loads only when a callback is built
    from alsx.model import ALS

METRICS = ("recall", "recall_gt", "ndcg", "hr", "map")  # names of alsx.eval.metrics.ranking_metrics
STEP = 0.5  # log2 spacing of the reg_ratio scans (sqrt(2) apart)
MAX_STEPS = 3  # a scan extends at most this many steps past its start on either side
MAX_SHIFT = 2.0  # log2 bound of the extrapolated move (at most 4x less lambda for the whole input)


def validation_split(train: Interactions, fraction: float = VALIDATION_FRACTION, seed: int = 0) -> Split:
    """A per-row holdout of ``train`` (the training input or a split's training part).

    Returns a Split whose ``train`` and ``test`` partition ``train``'s entries exactly; nothing
    outside ``train`` (e.g. the test part of a given split) can reach either side.
    """
    return random_holdout(train, fraction=fraction, seed=seed)


def scored_sample(val: Split, max_rows: int | None, seed: int = 0) -> Split:
    """``val`` with the held-out entries of at most ``max_rows`` of its rows (a seeded sample; all for None or 0).

    Only the scoring shrinks: the training part is ``val.train`` itself, so every trial trains on the same
    entries, and every trial is scored on the same rows (paired comparisons).
    """
    rows = np.unique(val.test.rows)
    if not max_rows or rows.size <= max_rows:
        return val
    keep = np.zeros(int(val.test.shape[0]), bool)
    keep[np.random.default_rng(seed).choice(rows, size=max_rows, replace=False)] = True
    return dataclasses.replace(val, test=val.test.select(keep[val.test.rows]))


def parse_metric(metric: str) -> int:
    """The cut-off k of 'recall@20' / 'ndcg@20' / ... (ValueError naming the accepted forms)."""
    name, _, k = metric.partition("@")
    if name not in METRICS or not k.isdigit() or int(k) < 1:
        raise ValueError(
            f"metric must be one of {', '.join(m + '@K' for m in METRICS)} (e.g. recall@20), got {metric!r}"
        )
    return int(k)


def validation_metric(
    w: np.ndarray, h: np.ndarray, val: Split, hp: HParams, metric: str = METRIC, alpha: float | None = None
) -> float:
    """``metric`` of tables w [n_rows, d], h [n_cols, d] on ``val`` (alsx.eval.protocol.evaluate);
    NaN when a table is not finite (a diverged trial)."""
    from alsx.eval.protocol import evaluate

    if not (np.isfinite(w).all() and np.isfinite(h).all()):
        return float("nan")
    k = parse_metric(metric)
    return float(evaluate(w, h, val, hp, (k,), alpha, baseline=False)["model"][metric])


def validation_curve(
    engine: Any,
    hp: HParams,
    val: Split,
    epochs: int,
    every: int,
    seed: int = 0,
    metric: str = METRIC,
    alpha: float | None = None,
    report: Callable[[int, float], None] | None = None,
) -> list[tuple[int, float]]:
    """Trains ``engine`` (fitted to ``val.train``, objective ``hp``) from a fresh start for ``epochs``,
    scoring ``val`` every ``every`` epochs and after the last: [(epoch, value), ...].

    ``report(epoch, value)`` runs after each score and may raise to stop (a pruned trial).
    Raises FloatingPointError at a non-finite table and DivergenceError as run_epochs does.
    """
    from alsx.train import run_epochs

    engine.set_hparams(hp)
    curve: list[tuple[int, float]] = []

    def on_epoch(st) -> None:
        if st.epoch % every and st.epoch != epochs:
            return
        value = validation_metric(*engine.to_numpy(st), val, hp, metric, alpha)
        curve.append((st.epoch, value))
        if math.isnan(value):
            raise FloatingPointError(f"non-finite tables at epoch {st.epoch}")
        if report is not None:
            report(st.epoch, value)

    run_epochs(engine, epochs, seed, on_epoch=on_epoch)
    return curve


class EarlyStopping:
    """An ``ALS.fit`` callback: stops after ``patience`` evaluations without a better validation metric.

    It evaluates every ``every`` epochs (and at the model's last epoch) on ``val`` and copies the
    best epoch's tables; it ends training by raising :class:`StopTraining` with those tables,
    also at the last epoch when an earlier one was better, so the model keeps the best epoch's.

    Args:
      model: the ALS being fitted on ``val.train`` (its ``engine_`` turns states into tables).
      val: the validation split (:func:`validation_split` of the training part).
      patience: evaluations without improvement before stopping (>= 1).
    """

    def __init__(self, model: ALS, val: Split, patience: int, metric: str = METRIC, every: int = 1):
        if patience < 1 or every < 1:
            raise ValueError(f"patience and every must be >= 1, got {patience} and {every}")
        parse_metric(metric)
        self.model, self.val, self.patience, self.metric, self.every = model, val, patience, metric, every
        self.best, self.best_epoch, self.best_tables, self.bad = -math.inf, 0, None, 0
        self.curve: list[tuple[int, float]] = []

    @property
    def train(self) -> Interactions:
        """What the model is to be fitted on: the training part minus the validation entries."""
        return self.val.train

    def __call__(self, record: dict, st: Any) -> None:
        last = st.epoch == self.model.epochs
        if st.epoch % self.every and not last:
            return
        w, h = self.model.engine_.to_numpy(st)
        value = validation_metric(w, h, self.val, self.model.hparams, self.metric, self.model.alpha)
        record["validation"] = {self.metric: value}
        self.curve.append((st.epoch, value))
        if value > self.best:
            self.best, self.best_epoch, self.bad = value, st.epoch, 0
            self.best_tables = (np.array(w, np.float32), np.array(h, np.float32))
        else:
            self.bad += 1
        if self.best_tables is None:
            return
        if self.bad >= self.patience:
            raise StopTraining(
                f"no better validation {self.metric} for {self.bad} evaluations after epoch "
                f"{self.best_epoch} ({self.best:.4f})",
                tables=self.best_tables,
                epoch=self.best_epoch,
            )
        if last and self.best_epoch != st.epoch:
            raise StopTraining(
                f"last epoch; the best validation {self.metric} was epoch {self.best_epoch} ({self.best:.4f})",
                tables=self.best_tables,
                epoch=self.best_epoch,
            )


def mean_curve(curves: list[list[tuple[int, float]]]) -> list[tuple[int, float]]:
    """[(epoch, mean over ``curves``)] at the epochs every curve was scored at (curves of one point on several
    carves)."""
    values = [dict(c) for c in curves]
    epochs = sorted(set.intersection(*(set(v) for v in values)))
    return [(e, float(np.mean([v[e] for v in values]))) for e in epochs]


def peak(scan: dict[float, float]) -> float:
    """The log2 position of the maximum of ``scan`` {log2 x: value}: the vertex of the parabola through
    the best point and its two neighbours, or the best point itself at an edge, beside a failed fit
    (-inf) or without curvature."""
    xs = sorted(scan)
    i = max(range(len(xs)), key=lambda j: (scan[xs[j]], -abs(xs[j])))  # ties: the point nearest the start
    if i == 0 or i == len(xs) - 1:
        return xs[i]
    x = np.array(xs[i - 1 : i + 2])
    y = np.array([scan[v] for v in x])
    if not np.isfinite(y).all():  # a failed neighbour: no parabola
        return xs[i]
    a, b, _ = np.polyfit(x, y, 2)
    flat = a > -1e-9 * (1.0 + np.abs(y).max())  # no curvature beyond round-off
    return xs[i] if flat else float(np.clip(-b / (2 * a), x[0], x[2]))


def scan_peak(
    score: Callable[[float], float],
    known: dict[float, float] | None = None,
    start: float = 0.0,
    stop: Callable[[], bool] | None = None,
) -> dict:
    """Scores log2 offsets start - STEP, start, start + STEP and walks on (at most MAX_STEPS, and not
    once ``stop()`` says so) while the best point is at an edge: {log2 offset: value}.  ``score``
    returns NaN for a failed fit."""
    values = dict(known or {})

    def at(x: float) -> float:
        if x not in values:
            v = score(x)
            values[x] = -math.inf if math.isnan(v) else v
        return values[x]

    for x in (start - STEP, start, start + STEP):
        at(x)
    for _ in range(MAX_STEPS):
        if stop is not None and stop():
            break
        xs = sorted(values)
        best = max(xs, key=lambda v: values[v])
        if best == xs[0] and xs[0] > start - (MAX_STEPS + 1) * STEP:
            at(xs[0] - STEP)
        elif best == xs[-1] and xs[-1] < start + (MAX_STEPS + 1) * STEP:
            at(xs[-1] + STEP)
        else:
            break
    return values


@dataclasses.dataclass(frozen=True)
class SizeCorrection:
    """What :func:`size_corrected` measured: the scans {log2 multiple of reg_ratio: validation metric}
    on carve A (the search's carve) and carve B (a carve of A), their peaks, and the result."""

    reg_ratio: float  # the search's best
    corrected: float  # for a fit on the whole input
    scan_a: dict[float, float]
    scan_b: dict[float, float]
    peak_a: float  # log2 multiples of reg_ratio
    peak_b: float
    fits: int

    def as_dict(self) -> dict:
        scans = {n: {f"{2.0**k:.4g}": v for k, v in sorted(getattr(self, n).items())} for n in ("scan_a", "scan_b")}
        return dataclasses.asdict(self) | scans  # JSON keys: the multiples of reg_ratio


def size_corrected(
    reg_ratio: float,
    score_a: Callable[[float], float],
    score_b: Callable[[float], float],
    known_a: dict[float, float] | None = None,
    deadline: float | None = None,
) -> SizeCorrection:
    """reg_ratio for the whole input from scans on carve A (share 1 - f) and carve B ((1 - f)^2).

    score_a(s) / score_b(s): the validation metric of the search's best point with reg_ratio s,
    trained on A / B (NaN: failed).  known_a: A's scores already measured, {log2 multiple: value}.
    deadline (time.perf_counter()): a scan walks on only while its next fit, and B's 3 fits still to
    come during A's scan, fit before it at the longest fit's duration so far (each scan always scores
    its 3 points).
    The move from A to the whole input is the measured move from B to A, bounded by MAX_SHIFT and
    never towards *more* regularisation (more data never needs more; a scan that says so is noise).
    """
    seconds: list[float] = []  # of each fit

    def counted(score: Callable[[float], float]) -> Callable[[float], float]:
        def f(k: float) -> float:
            t = time.perf_counter()
            value = score(reg_ratio * 2.0**k)
            seconds.append(time.perf_counter() - t)
            return value

        return f

    def stop(fits_after: int) -> Callable[[], bool]:  # one more fit and fits_after compulsory ones would end late
        return lambda: (
            deadline is not None and time.perf_counter() + (1 + fits_after) * max(seconds, default=0.0) > deadline
        )

    scan_a = scan_peak(counted(score_a), known_a, stop=stop(3))
    pa = peak(scan_a)
    scan_b = scan_peak(counted(score_b), start=round(pa / STEP) * STEP, stop=stop(0))
    pb = peak(scan_b)
    move = float(np.clip(pa - pb, -MAX_SHIFT, 0.0))
    return SizeCorrection(reg_ratio, reg_ratio * 2.0 ** (pa + move), scan_a, scan_b, pa, pb, len(seconds))
