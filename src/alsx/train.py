"""The one training path: epochs of an engine with history, loss, divergence checks, evaluation,
progress, callbacks and checkpoints.

Every way of training goes through :func:`run`: ``ALS.fit`` (and so ``alsx train FILE``), ``alsx
train DATASET_FOLDER`` (``alsx.webgraph.train``) and multi-process runs.  :func:`run_epochs` is
the loop underneath it (resume, save, watchdog), for callers that need no history.

>>> result = run(engine, epochs=16, seed=0, loss_every=1, progress=False)   # doctest: +SKIP
>>> w, h = engine.to_numpy(result.state)                                     # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from alsx.callbacks import StopTraining
from alsx.checkpoint import Checkpointer, CheckpointMismatchError, Restored
from alsx.config import HParams
from alsx.core.engine import Engine
from alsx.core.sharded import ShardedEngine
from alsx.core.state import ALSState
from alsx.data.split import Split
from alsx.distributed import Watchdog, fail_fast
from alsx.errors import DivergenceError
from alsx.eval.protocol import evaluate, sharded_scorer
from alsx.serve.sharded_topk import ShardedTable

log = logging.getLogger(__name__)

#: A callback: called after each epoch with (history record, state); may raise StopTraining.
Callback = Callable[[dict, ALSState], None]


@dataclasses.dataclass
class TrainResult:
    """What :func:`run` returns.

    Attributes:
      state: the state after the last epoch run (the engine's layout).
      history: one record per epoch (a resumed run: the saved ones first): epoch, seconds, loss
        parts, metrics, engine facts (``Engine.epoch_record``).
      stopped: the reason a callback gave with :class:`StopTraining`, or None.
      tables: host tables (row [n_rows, d], column [n_cols, d]) a StopTraining carried, or None:
        keep them instead of ``state``'s.
      tables_epoch: the epoch ``tables`` come from.
      eval_seconds: time spent in evaluation during training.
    """

    state: ALSState
    history: list[dict]
    stopped: str | None = None
    tables: tuple[np.ndarray, np.ndarray] | None = None
    tables_epoch: int | None = None
    eval_seconds: float = 0.0


def sharded_eval_topk(engine: Engine, state: ALSState):
    """For a ShardedEngine: the evaluation scorer that ranks against its column shards in
    place (``alsx.eval.protocol.sharded_scorer``); None for one-device engines."""
    if not isinstance(engine, ShardedEngine):
        return None
    return sharded_scorer(ShardedTable.from_engine(engine, state))


def check_finite(table: np.ndarray, name: str, epoch: int, counts: np.ndarray, hp: HParams) -> None:
    """Raises DivergenceError naming how much of ``table`` [n, d] is non-finite and where it starts.

    counts: [n] stored entries per row of that side (the first bad row's count hints at the cause).
    A remedy is named only where one is measured: with reg = 0 and unobserved_weight = 0 a row
    with fewer than d entries has a singular system (tests/test_cli.py diverges there at epoch 1
    and trains with any reg > 0).  Otherwise none is known (the one cause seen at real settings,
    CG in float32 subnormals, is fixed at its root: ``alsx.core.solvers.RESIDUAL_FLOOR``).
    """
    bad = ~np.isfinite(table)
    if not bad.any():
        return
    rows = np.flatnonzero(bad.any(axis=1))
    first = int(rows[0])
    raise DivergenceError(
        f"training diverged at epoch {epoch}: {int(bad.sum()):,} non-finite values in {len(rows):,} of "
        f"{len(table):,} rows of the {name} table (first: row {first}, which has {int(counts[first]):,} stored "
        f"entries); the tables after epoch {epoch - 1} were finite. "
        + (
            "With --reg 0 and --unobserved-weight 0 a row with fewer than --dim entries has no unique "
            "solution: give --reg > 0"
            if hp.reg == 0 and hp.unobserved_weight == 0
            else "This is not expected: please report it with the command and the output of --debug"
        )
    )


def split_evaluator(engine: Engine, split: Split, ks: tuple[int, ...], alpha: float | None) -> Callable:
    """state -> the model's metrics on ``split`` (ranked on the column shards when sharded)."""

    def metrics(state: ALSState) -> dict:
        w, h = engine.to_numpy(state)
        return evaluate(w, h, split, engine.hp, ks, alpha, baseline=False, topk=sharded_eval_topk(engine, state))[
            "model"
        ]

    return metrics


def run(
    engine: Engine,
    epochs: int,
    seed: int = 0,
    *,
    split: Split | None = None,
    alpha: float | None = None,
    eval_every: int = 0,
    eval_ks: tuple[int, ...] = (20, 50),
    evaluator: Callable[[ALSState], dict] | None = None,
    eval_at_end: bool = True,
    callbacks: Sequence[Callback] = (),
    checkpointer: Checkpointer | None = None,
    step_timeout_s: float | None = None,
    loss_every: int = 1,
    progress: bool = True,
    log_line: Callable[[str], None] | None = None,
    counts: Callable[[], tuple[np.ndarray, np.ndarray]] | None = None,
) -> TrainResult:
    """Trains ``engine`` to ``epochs`` completed epochs and records each one.

    After every epoch: a history record (seconds, ``engine.epoch_record()``); the loss every
    ``loss_every`` epochs and after the last (0: never), else a finiteness check of the tables
    (a non-finite table raises DivergenceError naming its first bad row); the metrics every
    ``eval_every`` epochs (and after the last unless ``eval_at_end`` is False); the progress
    bar or ``log_line``; then ``callbacks`` (one raising StopTraining ends the run cleanly).
    Checkpoints (resume, save on schedule, history saved with each step) as :func:`run_epochs`.

    Args:
      engine: any ``alsx.core.engine.Engine``.
      split: evaluated by default (``eval.protocol.evaluate``) when ``eval_every`` > 0.
      alpha: confidence scaling of the split's entries at evaluation.
      evaluator: state -> metrics dict, instead of evaluating ``split`` (dataset folders).
      counts: () -> (stored entries per row, per column), for the divergence message.
      log_line: called with one line per epoch (``alsx train DATASET``); None: none.
    Raises:
      DivergenceError: a table became non-finite.
    """
    history: list[dict] = []
    clock = [time.perf_counter()]
    eval_s = [0.0]
    stop: list[StopTraining] = []
    if evaluator is None and split is not None and eval_every:
        evaluator = split_evaluator(engine, split, eval_ks, alpha)
    bar = tqdm(total=epochs, desc="alsx", unit="epoch", disable=not progress)

    def on_epoch(st: ALSState) -> bool:
        seconds = time.perf_counter() - clock[0]
        record: dict[str, Any] = {"epoch": st.epoch, "seconds": seconds, **engine.epoch_record()}
        t1 = time.perf_counter()
        if loss_every and (st.epoch % loss_every == 0 or st.epoch == epochs):
            loss = engine.loss(st)
            record.update(loss=loss.to_dict(), loss_seconds=time.perf_counter() - t1)
            finite = math.isfinite(loss.total)
        else:  # one pass over the tables instead of the loss
            finite = bool(jnp.isfinite(st.w).all() & jnp.isfinite(st.h).all())
            record["check_seconds"] = time.perf_counter() - t1
        if not finite:
            _diverged(engine, st, record, counts)
        if (
            evaluator is not None
            and eval_every
            and (st.epoch % eval_every == 0 or st.epoch == epochs)
            and (eval_at_end or st.epoch != epochs)
        ):
            t1 = time.perf_counter()
            record["metrics"] = evaluator(st)
            eval_s[0] += time.perf_counter() - t1
        history.append(record)
        _report(bar, log_line, record)
        try:
            for callback in callbacks:
                callback(record, st)
        except StopTraining as e:
            record["stopped"] = {"reason": e.reason, "kept_epoch": e.epoch if e.tables is not None else st.epoch}
            stop.append(e)
        clock[0] = time.perf_counter()
        return bool(stop)

    def on_resume(found: Restored) -> None:  # the history saved with the checkpoint: every epoch is kept
        if "history" not in found.extra and (progress or log_line is not None):
            say(
                f"alsx: warning: the checkpoint of epoch {found.epoch} holds no history (saved by an older "
                f"alsx): history.json starts at epoch {found.epoch + 1}"
            )
        history[:] = [r for r in found.extra.get("history", []) if r["epoch"] <= found.epoch]
        bar.n = found.epoch
        bar.refresh()
        clock[0] = time.perf_counter()  # the first resumed epoch's seconds exclude the restore

    try:
        state = run_epochs(
            engine,
            epochs,
            seed,
            checkpointer,
            step_timeout_s=step_timeout_s,
            on_epoch=on_epoch,
            extra=lambda: {"history": history},
            on_resume=on_resume,
        )
    finally:
        bar.close()
    result = TrainResult(state=state, history=history, eval_seconds=eval_s[0])
    if stop:
        result.stopped, result.tables, result.tables_epoch = stop[0].reason, stop[0].tables, stop[0].epoch
    return result


def _diverged(engine: Engine, st: ALSState, record: dict, counts) -> None:
    """Raises DivergenceError for a state with non-finite tables, naming the first bad row."""
    if counts is not None:
        w, h = engine.to_numpy(st)
        rc, cc = counts()
        check_finite(w, "row", st.epoch, rc, engine.hp)
        check_finite(h, "column", st.epoch, cc, engine.hp)
    raise DivergenceError(
        f"training diverged at epoch {st.epoch}: loss is {record.get('loss', {}).get('total', 'not finite')}"
    )


def _report(bar, log_line, record: dict) -> None:
    bar.n = record["epoch"]
    seconds = record["seconds"]
    if "loss" in record:
        bar.set_postfix(loss=f"{record['loss']['total']:.5g}", s=f"{seconds:.2f}")
    else:
        bar.set_postfix(s=f"{seconds:.2f}")
    if log_line is not None:
        log_line(
            f"epoch {record['epoch']}: {seconds:.1f}s"
            + (f", loss {record['loss']['total']:.6g}" if "loss" in record else "")
        )


def say(line: str) -> None:
    """One line on stderr from process 0, above any progress bar."""
    if jax.process_index() == 0:
        tqdm.write(line, file=sys.stderr)


def run_epochs(
    engine: Engine,
    epochs: int,
    seed: int = 0,
    checkpointer: Checkpointer | None = None,
    *,
    step_timeout_s: float | None = None,
    on_epoch: Callable[[ALSState], bool | None] | None = None,
    extra: Callable[[], dict] | None = None,
    on_resume: Callable[[Restored], None] | None = None,
) -> ALSState:
    """Runs ``engine`` to ``epochs`` completed epochs, resuming from ``checkpointer`` if it holds one.

    Saves when :meth:`Checkpointer.due` says so and always after the last epoch.  Resuming
    below newer steps that failed to read back moves those aside (:meth:`Checkpointer.set_aside`,
    reported on stderr and in the log), so that training can save those epochs again.  In a
    multi-process run a failed peer ends this process with a clear message
    (:func:`alsx.distributed.fail_fast`), and ``step_timeout_s`` bounds each epoch
    (:class:`alsx.distributed.Watchdog`).

    Args:
      engine: any engine.
      epochs: total epochs wanted (a resumed run does only the missing ones).
      seed: initialisation seed for a fresh start.
      checkpointer: where to resume from and save to (None: no checkpoints).
      step_timeout_s: watchdog limit per epoch.
      on_epoch: called with the state after each epoch; a true return ends training there
        (the state is saved as after the last epoch).
      extra: called at each save; its dict is stored with the step (e.g. the history so far).
      on_resume: called with what was restored, before the first epoch of a resumed run.

    Raises:
      CheckpointMismatchError: the newest good checkpoint is past ``epochs``.
    """
    state = None
    with fail_fast("training"), Watchdog(step_timeout_s) as watchdog:
        if checkpointer is not None:
            found = checkpointer.restore(engine)
            if found is not None:
                state = _resumed(checkpointer, found, epochs)
                if on_resume is not None:
                    on_resume(found)
        if state is None:
            state = engine.init_state(seed)
        saved = None
        while state.epoch < epochs:
            state = engine.epoch(state)
            jax.block_until_ready((state.w, state.h))
            watchdog.beat()
            stop = on_epoch(state) if on_epoch is not None else False
            if checkpointer is not None and checkpointer.maybe_save(engine, state, extra() if extra else None):
                saved = state.epoch
            if stop:
                break
        if (
            checkpointer is not None
            and saved != state.epoch
            and state.epoch > 0
            and state.epoch not in checkpointer.epochs()
        ):
            checkpointer.save(engine, state, extra() if extra else None)
    return state


def _resumed(checkpointer: Checkpointer, found: Restored, epochs: int) -> ALSState:
    """The restored state, once the unreadable newer steps are moved aside and it is said."""
    if found.epoch > epochs:
        raise CheckpointMismatchError(
            f"the newest good checkpoint in {checkpointer.options.directory} is at epoch "
            f"{found.epoch}, past the {epochs} epochs asked for: ask for --epochs {found.epoch} "
            "or more, or resume from another folder"
        )
    where = checkpointer.options.directory
    for epoch, reason in found.skipped:
        moved = checkpointer.set_aside(epoch)
        log.info("moved unreadable checkpoint %s/%d to %s", where, epoch, moved)
        say(f"alsx: warning: checkpoint {where}/{epoch} is unreadable ({reason}); moved it to {moved}")
    log.info("resumed from epoch %d of %s", found.epoch, where)
    say(f"alsx: resumed from epoch {found.epoch} ({where})")
    return found.state
