"""Multi-process start-up and failure handling.

One process per host (or per accelerator) runs the same program; they meet at a
coordinator (``jax.distributed``) and then form one global mesh.  Flags, with
the environment variables used when a flag is absent::

    --coordinator HOST:PORT     JAX_COORDINATOR_ADDRESS
    --num-processes N           JAX_NUM_PROCESSES
    --process-id I              JAX_PROCESS_ID
    --local-device-ids 0,1      JAX_LOCAL_DEVICE_IDS
    --heartbeat-timeout S       ALSX_HEARTBEAT_TIMEOUT   (default 30)
    --init-timeout S            ALSX_INIT_TIMEOUT        (default 300)
    --step-timeout S            ALSX_STEP_TIMEOUT        (default: off)

When a process dies the others stop with a clear error instead of hanging:

* a collective with a dead peer fails (on CPU, gloo sees the closed connection):
  :func:`fail_fast` turns that into one ``CRITICAL`` log line and exit code
  :data:`EXIT_PEER_LOST` at once, skipping JAX's shutdown barrier (which would
  otherwise wait for the heartbeat timeout);
* a peer that stops answering without closing its connections is declared dead by
  the coordination service after ``--heartbeat-timeout`` seconds, which terminates
  every other process (JAX's own mechanism);
* a process stuck anywhere else (a deadlocked host thread still heartbeats) is
  stopped by :class:`Watchdog` when no epoch finishes within ``--step-timeout``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator

from alsx.collectives import allgather_bytes, allreduce_sum, route  # noqa: F401 - host collectives, importable from here too

# JAX is imported inside the functions that use it: `alsx` parses its flags (and reports a
# wrong one) without loading JAX, and the multi-process flags live here.

log = logging.getLogger(__name__)

EXIT_PEER_LOST = 75
"""Exit status when a peer process failed (EX_TEMPFAIL: rerun to resume from the checkpoint)."""

EXIT_STALLED = 76
"""Exit status when the watchdog saw no progress within the step timeout."""


@dataclasses.dataclass(frozen=True)
class DistributedOptions:
    """How to join a multi-process run.

    Attributes:
      coordinator: HOST:PORT of process 0's coordination service.
      num_processes: N >= 1.
      process_id: this process, 0 <= I < N.
      local_device_ids: devices of this host this process uses (None = all).
      heartbeat_timeout_s: a process silent this long is declared dead.
      init_timeout_s: how long to wait for all processes to join.
      step_timeout_s: watchdog limit per epoch (None = no watchdog).
    """

    coordinator: str | None = None
    num_processes: int = 1
    process_id: int = 0
    local_device_ids: tuple[int, ...] | None = None
    heartbeat_timeout_s: int = 30
    init_timeout_s: int = 300
    step_timeout_s: float | None = None

    def __post_init__(self) -> None:
        if self.num_processes < 1:
            raise ValueError(f"--num-processes must be >= 1, got {self.num_processes}")
        if not 0 <= self.process_id < self.num_processes:
            raise ValueError(f"--process-id must be in [0, {self.num_processes}), got {self.process_id}")
        if self.num_processes > 1 and not self.coordinator:
            raise ValueError("a multi-process run needs --coordinator HOST:PORT (or JAX_COORDINATOR_ADDRESS)")
        if self.coordinator and ":" not in self.coordinator:
            raise ValueError(f"--coordinator must be HOST:PORT, got {self.coordinator!r}")
        if self.heartbeat_timeout_s < 1 or self.init_timeout_s < 1:
            raise ValueError("--heartbeat-timeout and --init-timeout must be >= 1 second")
        if self.step_timeout_s is not None and self.step_timeout_s <= 0:
            raise ValueError(f"--step-timeout must be > 0, got {self.step_timeout_s}")

    @property
    def multi_process(self) -> bool:
        return self.num_processes > 1


def add_distributed_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the multi-process flags (see the module doc) to ``parser``."""
    g = parser.add_argument_group("multi-process training")
    g.add_argument(
        "--coordinator",
        metavar="HOST:PORT",
        default=None,
        help="address of process 0's coordinator (env JAX_COORDINATOR_ADDRESS)",
    )
    g.add_argument(
        "--num-processes",
        type=int,
        default=None,
        metavar="N",
        help="number of processes (env JAX_NUM_PROCESSES; default 1)",
    )
    g.add_argument(
        "--process-id", type=int, default=None, metavar="I", help="index of this process, 0..N-1 (env JAX_PROCESS_ID)"
    )
    g.add_argument(
        "--local-device-ids",
        default=None,
        metavar="IDS",
        help="comma-separated local devices for this process (env JAX_LOCAL_DEVICE_IDS)",
    )
    g.add_argument(
        "--heartbeat-timeout",
        type=int,
        default=None,
        metavar="S",
        help="seconds of silence after which a process counts as dead (default 30)",
    )
    g.add_argument(
        "--init-timeout",
        type=int,
        default=None,
        metavar="S",
        help="seconds to wait for every process to join (default 300)",
    )
    g.add_argument(
        "--step-timeout",
        type=float,
        default=None,
        metavar="S",
        help="abort when an epoch takes longer than this (default: no limit)",
    )


def _env_int(name: str) -> int | None:
    v = os.environ.get(name)
    if v is None or v == "":
        return None
    try:
        return int(v)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {v!r}") from None


def options_from_args(args: argparse.Namespace) -> DistributedOptions:
    """Flags first, then the environment, then defaults."""

    def pick(flag, env, default):
        v = getattr(args, flag, None)
        if v is None:
            v = _env_int(env) if env else None
        return default if v is None else v

    ids = getattr(args, "local_device_ids", None) or os.environ.get("JAX_LOCAL_DEVICE_IDS")
    step = getattr(args, "step_timeout", None)
    if step is None and os.environ.get("ALSX_STEP_TIMEOUT"):
        step = float(os.environ["ALSX_STEP_TIMEOUT"])
    return DistributedOptions(
        coordinator=getattr(args, "coordinator", None) or os.environ.get("JAX_COORDINATOR_ADDRESS"),
        num_processes=pick("num_processes", "JAX_NUM_PROCESSES", 1),
        process_id=pick("process_id", "JAX_PROCESS_ID", 0),
        local_device_ids=tuple(int(x) for x in str(ids).split(",")) if ids else None,
        heartbeat_timeout_s=pick("heartbeat_timeout", "ALSX_HEARTBEAT_TIMEOUT", 30),
        init_timeout_s=pick("init_timeout", "ALSX_INIT_TIMEOUT", 300),
        step_timeout_s=step,
    )


@dataclasses.dataclass(frozen=True)
class Topology:
    """Where this process stands once initialised.

    Attributes:
      process_index, process_count: this process and how many there are.
      local_devices, global_devices: device counts.
      options: the options used.
    """

    process_index: int
    process_count: int
    local_devices: int
    global_devices: int
    options: DistributedOptions


def initialize(options: DistributedOptions) -> Topology:
    """Joins the run described by ``options`` (a no-op for a single process).

    Must be called before anything touches a JAX device.  On CPU, collectives across
    processes go through gloo.
    """
    import jax

    if options.multi_process:
        # Cross-process collectives of the CPU backend (harmless when the mesh is GPUs).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            options.coordinator,
            num_processes=options.num_processes,
            process_id=options.process_id,
            local_device_ids=list(options.local_device_ids) if options.local_device_ids else None,
            initialization_timeout=options.init_timeout_s,
            heartbeat_timeout_seconds=options.heartbeat_timeout_s,
            # A survivor should not linger at exit waiting for a dead peer.
            shutdown_timeout_seconds=max(5, options.heartbeat_timeout_s),
        )
        log.info("process %d of %d joined %s", options.process_id, options.num_processes, options.coordinator)
    return Topology(
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        local_devices=jax.local_device_count(),
        global_devices=jax.device_count(),
        options=options,
    )


def init_from_args(args: argparse.Namespace) -> Topology:
    """:func:`initialize` from the flags of :func:`add_distributed_arguments` (and the environment)."""
    return initialize(options_from_args(args))


def _hard_exit(code: int, message: str) -> None:
    """Logs ``message`` and leaves at once (no atexit, no shutdown barrier on a dead peer)."""
    log.critical(message)
    sys.stderr.write(f"alsx: {message}\n")
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(code)


_PEER_SIGNS = (
    "gloo",
    "connection",
    "heartbeat",
    "coordination",
    "unavailable",
    "socket",
    "peer",
    "barrier",
    "nccl",
    "collective",
)


@contextlib.contextmanager
def fail_fast(what: str = "training") -> Iterator[None]:
    """In a multi-process run, turns a collective failure into a clear, immediate exit.

    A runtime error whose text points at a lost peer exits the process with
    :data:`EXIT_PEER_LOST` and a message naming this process; other errors pass
    through.  With one process it does nothing.
    """
    import jax

    try:
        yield
    except jax.errors.JaxRuntimeError as e:
        text = str(e)
        if jax.process_count() > 1 and any(s in text.lower() for s in _PEER_SIGNS):
            _hard_exit(
                EXIT_PEER_LOST,
                f"process {jax.process_index()} of {jax.process_count()} stopped {what}: another process "
                f"failed or became unreachable ({text.splitlines()[0][:200]}). Restart all processes; "
                "training resumes from the last checkpoint.",
            )
        raise


@contextlib.contextmanager
def leave_on_error(what: str = "training") -> Iterator[None]:
    """In a multi-process run, an exception ends this process at once (its traceback and a
    one-line reason on stderr, exit status 1): its closed connections then make the peers'
    collectives fail, which :func:`fail_fast` reports, instead of everyone waiting for
    JAX's shutdown barrier to time out.  With one process the exception propagates."""
    import jax

    try:
        yield
    except Exception as e:  # noqa: BLE001 - every failure must end this process in a multi-process run
        if jax.process_count() <= 1:
            raise
        import traceback

        traceback.print_exc()
        _hard_exit(1, f"process {jax.process_index()} of {jax.process_count()} failed {what}: {type(e).__name__}: {e}")


class Watchdog:
    """Exits the process if :meth:`beat` is not called for ``timeout_s`` seconds.

    Use around the epoch loop: ``with Watchdog(600) as wd: ... wd.beat()``.  A
    timeout of None makes it inert.
    """

    def __init__(self, timeout_s: float | None, what: str = "epoch"):
        self.timeout_s = timeout_s
        self.what = what
        self._last = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        self._last = time.monotonic()

    def _run(self) -> None:
        import jax

        assert self.timeout_s is not None
        period = min(1.0, self.timeout_s / 4)
        while not self._stop.wait(period):
            idle = time.monotonic() - self._last
            if idle > self.timeout_s:
                _hard_exit(
                    EXIT_STALLED,
                    f"process {jax.process_index()}: no {self.what} finished in {idle:.0f}s "
                    f"(limit {self.timeout_s:.0f}s); a peer may be stuck. Stopping.",
                )

    def __enter__(self) -> Watchdog:
        if self.timeout_s is not None:
            self._last = time.monotonic()
            self._thread = threading.Thread(target=self._run, name="alsx-watchdog", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
