"""Orbax checkpoints of the training state that any mesh can resume.

Layout of a checkpoint directory (one Orbax ``CheckpointManager``)::

    <dir>/<epoch>/tables/   w [n_rows', d] (and h [n_cols', d] unless tied), EXTERNAL row order;
                            n' rounds n up to a multiple of the saving run's device count
                            (zero rows: shardings must divide evenly)
                            and, for the CPU backend's rotated tables, basis [d, d] float64
                            (original tables = stored @ basis^T)
    <dir>/<epoch>/meta/     JSON: epoch, shapes, dtype, tied, exact checksums of the tables
                            (and the basis's SHA-256), and ``extra``: what the caller saves with
                            the step (``ALS.fit``: the training history up to that epoch)
    <dir>/<epoch>/alsx_files.json  sizes and CRC-32s of the step's files, checked before a read
                            (``alsx.checkpoint_files``)
    <dir>/<epoch>.corrupt/  a step that failed to read back, moved aside (never deleted) when a
                            run resumed from an older one, so that the epoch can be saved again

Tables are stored un-permuted and sharded by rows, so a run with another device
or process count restores them by passing target ``ShapeDtypeStruct``s that
carry *its* sharding (and its own row padding: Orbax pads or truncates the zero
tail with ``strict=False``), then permutes them into its own layout by an all-to-all
(``alsx.core.sharded.permute_rows``: no device ever holds a whole table).  Nothing is
pickled.

Atomicity is Orbax's: a step is written under a temporary name and renamed
when complete, so a run killed mid-save leaves no step that looks finished.  A
finished step that fails to read back, or whose checksum disagrees with the
one recorded at save time, is reported (``logging.warning`` and
:attr:`Restored.skipped`) and the previous good step is used; the training loop (``alsx.train.run_epochs``) then moves
the bad steps aside to ``<epoch>.corrupt`` (Orbax refuses to save over an existing
step, so a run that resumed below one could never pass it) and says so.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from alsx import checkpoint_files
from alsx.checkpoint_files import describe_folder  # noqa: F401 - part of this module's interface
from alsx.core.engine import Engine
from alsx.core.sharding import SHARD, table_sharding
from alsx.core.state import ALSState
from alsx.errors import TrainingError, UsageError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


class CheckpointError(TrainingError):
    """No checkpoint step can be read back (all unreadable or corrupted)."""


class CheckpointMismatchError(CheckpointError, UsageError):
    """The checkpoints belong to another model (shape, dim, dtype) or are past the epochs asked
    for: the flags, not the files, are wrong."""

    exit_code = UsageError.exit_code


@dataclasses.dataclass(frozen=True)
class CheckpointOptions:
    """When and where to checkpoint.

    Attributes:
      directory: checkpoint root (created if missing).
      every_epochs: save after every K-th epoch (0 = never by count).
      every_minutes: also save when this many minutes have passed since the last save
        (None = never by time).
      max_to_keep: newest finished checkpoints kept (older ones deleted), >= 2 so a
        corrupted newest one still has a fallback.
    """

    directory: str
    every_epochs: int = 1
    every_minutes: float | None = None
    max_to_keep: int = 3

    def __post_init__(self) -> None:
        if self.every_epochs < 0:
            raise ValueError(f"every_epochs must be >= 0, got {self.every_epochs}")
        if self.every_minutes is not None and self.every_minutes <= 0:
            raise ValueError(f"every_minutes must be > 0 or None, got {self.every_minutes}")
        if self.max_to_keep < 2:
            raise ValueError(
                f"max_to_keep must be >= 2 (a fallback for a corrupted newest step), got {self.max_to_keep}"
            )


@dataclasses.dataclass(frozen=True)
class Restored:
    """What :meth:`Checkpointer.restore` found.

    Attributes:
      state: the restored state, in the engine's layout.
      epoch: the checkpoint's epoch.
      skipped: (epoch, reason) of newer checkpoints that were unreadable or corrupted.
      extra: the ``extra`` dict saved with the step ({} for steps saved without one).
    """

    state: ALSState
    epoch: int
    skipped: tuple[tuple[int, str], ...]
    extra: dict = dataclasses.field(default_factory=dict)


@jax.jit
def table_checksum(table: jax.Array) -> jax.Array:
    """uint32 sum over elements of bits(x) * (flat index + 1), mod 2**32.

    Integer addition modulo 2**32 is associative, so the value is exact and the same
    for any sharding or reduction order; it changes if any element changes or moves.
    """
    if table.dtype == jnp.float32:
        bits = jax.lax.bitcast_convert_type(table, jnp.uint32)
    else:  # 16-bit floats
        bits = jax.lax.bitcast_convert_type(table, jnp.uint16).astype(jnp.uint32)
    n, d = table.shape
    index = (
        jnp.arange(n, dtype=jnp.uint32)[:, None] * jnp.uint32(d)
        + jnp.arange(d, dtype=jnp.uint32)[None, :]
        + jnp.uint32(1)
    )
    return jnp.sum(bits * index, dtype=jnp.uint32)


def _sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _same_on_all_processes(flag: bool) -> bool:
    """Process 0's decision, broadcast (time-based decisions differ between hosts)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.int32(flag)))


class Checkpointer:
    """Saves and restores the tables of any engine (``alsx.core.engine.Engine``) through Orbax.

    Args:
      options: where and how often.
    """

    def __init__(self, options: CheckpointOptions):
        self.options = options
        os.makedirs(options.directory, exist_ok=True)
        self._manager = ocp.CheckpointManager(
            os.path.abspath(options.directory),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=options.max_to_keep,
                create=True,
                enable_async_checkpointing=False,  # a save returns only once the step is final
            ),
            item_names=("tables", "meta"),
        )
        self._last_save = time.monotonic()

    # ---- saving ----------------------------------------------------------------------------

    def due(self, epoch: int) -> bool:
        """Whether ``epoch`` should be saved under the options (agreed by all processes)."""
        o = self.options
        by_count = o.every_epochs > 0 and epoch % o.every_epochs == 0
        by_time = o.every_minutes is not None and time.monotonic() - self._last_save >= 60 * o.every_minutes
        return _same_on_all_processes(by_count or by_time)

    def maybe_save(self, engine: Engine, state: ALSState, extra: dict | None = None) -> bool:
        """Saves ``state`` (with ``extra``) if :meth:`due`; returns whether it saved."""
        if self.due(state.epoch):
            self.save(engine, state, extra)
            return True
        return False

    def save(self, engine: Engine, state: ALSState, extra: dict | None = None) -> None:
        """Writes ``state`` as step ``state.epoch`` (collective: every process calls it).

        ``extra``: JSON-serialisable data stored with the step and returned by :meth:`restore`
        as :attr:`Restored.extra`.
        """
        w, h = engine.to_external(state)
        tables = {"w": w} if state.tied else {"w": w, "h": h}
        keep_basis = engine.keeps_basis and state.basis is not None
        meta = {
            "format": FORMAT_VERSION,
            "epoch": int(state.epoch),
            "tied": bool(state.tied),
            "shapes": {"w": [engine.n_rows, engine.hp.dim]}
            | ({} if state.tied else {"h": [engine.n_cols, engine.hp.dim]}),
            "dtype": str(w.dtype),
            "checksums": {k: int(table_checksum(v)) for k, v in tables.items()},
            "extra": extra or {},
        }
        if keep_basis:
            tables["basis"] = np.ascontiguousarray(state.basis, np.float64)
            meta["basis_sha256"] = _sha256(tables["basis"])
        self._manager.save(
            int(state.epoch),
            args=ocp.args.Composite(tables=ocp.args.StandardSave(tables), meta=ocp.args.JsonSave(meta)),
            force=True,
        )
        self._manager.wait_until_finished()
        if jax.process_index() == 0:  # the step is final: list its files for verify() before any read
            checkpoint_files.write_digest(self._step_dir(state.epoch))
        self._last_save = time.monotonic()

    def _step_dir(self, epoch: int) -> str:
        return os.path.join(os.path.abspath(self.options.directory), str(int(epoch)))

    # ---- restoring -------------------------------------------------------------------------

    def epochs(self) -> list[int]:
        """Finished checkpoint epochs, newest first (temporary, unfinished ones are not listed)."""
        self._manager.reload()
        return sorted(self._manager.all_steps(), reverse=True)

    def restore(self, engine: Engine) -> Restored | None:
        """The newest good checkpoint placed on ``engine``'s mesh, or None if there is none.

        Raises:
          CheckpointError: checkpoints exist but none is usable, or they belong to a
            model of another shape or dtype (a configuration error, not corruption).
        """
        skipped: list[tuple[int, str]] = []
        for epoch in self.epochs():
            try:
                state, extra = self._restore_step(engine, epoch)
            except CheckpointError:
                raise
            except Exception as e:  # noqa: BLE001 - any read failure means "corrupted"
                reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
                log.warning(
                    "checkpoint %s/%d is unreadable (%s); trying an older one", self.options.directory, epoch, reason
                )
                skipped.append((epoch, reason))
                continue
            return Restored(state=state, epoch=epoch, skipped=tuple(skipped), extra=extra)
        if skipped:
            raise CheckpointError(
                f"no usable checkpoint in {self.options.directory}: "
                + "; ".join(f"epoch {s}: {r}" for s, r in skipped)
                + " (nothing was moved or deleted)"
            )
        return None

    def set_aside(self, epoch: int) -> str:
        """Renames the finished step ``epoch`` to ``<epoch>.corrupt`` (``.corrupt-2``, ... if taken)
        so that the epoch can be saved again; returns the new path.  Collective: process 0
        renames, every process waits for it."""
        src = self._step_dir(epoch)
        dst = checkpoint_files.set_aside_path(src)
        multi = jax.process_count() > 1
        if multi:  # every process has chosen the same name before process 0 renames
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"alsx-checkpoint-set-aside-{epoch}-named")
        if jax.process_index() == 0:
            os.rename(src, dst)
        if multi:
            multihost_utils.sync_global_devices(f"alsx-checkpoint-set-aside-{epoch}-moved")
        self._manager.reload()
        return dst

    def _restore_step(self, engine: Engine, epoch: int) -> tuple[ALSState, dict]:
        checkpoint_files.verify(self._step_dir(epoch))
        meta = self._manager.restore(epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        want = {"w": [engine.n_rows, engine.hp.dim]}
        if not engine.tied:
            want["h"] = [engine.n_cols, engine.hp.dim]
        dtype = jnp.dtype({"float32": jnp.float32, "bfloat16": jnp.bfloat16}[engine.hp.dtype])
        if bool(meta["tied"]) != bool(engine.tied) or meta["shapes"] != want or meta["dtype"] != str(dtype):
            raise CheckpointMismatchError(
                f"checkpoint {self.options.directory}/{epoch} holds tables {meta['shapes']} {meta['dtype']} "
                f"(tied={meta['tied']}) but the model needs {want} {dtype} (tied={engine.tied}); "
                "use another checkpoint directory or the same dim/dtype/data"
            )
        sharding = table_sharding(engine.mesh)
        P = sharding.mesh.shape[SHARD]
        target = {k: jax.ShapeDtypeStruct((-(-n // P) * P, d), dtype, sharding=sharding) for k, (n, d) in want.items()}
        if "basis_sha256" in meta:
            target["basis"] = np.zeros((engine.hp.dim, engine.hp.dim), np.float64)
        tables = self._manager.restore(  # strict=False: the zero tail is padded / truncated to this mesh
            epoch, args=ocp.args.Composite(tables=ocp.args.StandardRestore(target, strict=False))
        )["tables"]
        basis = None
        if "basis_sha256" in meta:
            basis = np.asarray(tables.pop("basis"), np.float64)
            if _sha256(basis) != meta["basis_sha256"]:
                raise ValueError("basis SHA-256 differs from the one saved")
        for k, v in tables.items():
            got = int(table_checksum(v))
            if got != int(meta["checksums"][k]):
                raise ValueError(f"table {k!r} checksum {got} != saved {meta['checksums'][k]}")
        h = tables["w"] if engine.tied else tables["h"]
        return engine.from_external(tables["w"], h, int(meta["epoch"]), basis), dict(meta.get("extra") or {})

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
