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
import functools
import logging
import os
import sys
import threading
import time
from typing import Iterator

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
    g.add_argument("--coordinator", metavar="HOST:PORT", default=None,
                   help="address of process 0's coordinator (env JAX_COORDINATOR_ADDRESS)")
    g.add_argument("--num-processes", type=int, default=None, metavar="N",
                   help="number of processes (env JAX_NUM_PROCESSES; default 1)")
    g.add_argument("--process-id", type=int, default=None, metavar="I",
                   help="index of this process, 0..N-1 (env JAX_PROCESS_ID)")
    g.add_argument("--local-device-ids", default=None, metavar="IDS",
                   help="comma-separated local devices for this process (env JAX_LOCAL_DEVICE_IDS)")
    g.add_argument("--heartbeat-timeout", type=int, default=None, metavar="S",
                   help="seconds of silence after which a process counts as dead (default 30)")
    g.add_argument("--init-timeout", type=int, default=None, metavar="S",
                   help="seconds to wait for every process to join (default 300)")
    g.add_argument("--step-timeout", type=float, default=None, metavar="S",
                   help="abort when an epoch takes longer than this (default: no limit)")


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


_PEER_SIGNS = ("gloo", "connection", "heartbeat", "coordination", "unavailable", "socket", "peer",
               "barrier", "nccl", "collective")


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
            _hard_exit(EXIT_PEER_LOST,
                       f"process {jax.process_index()} of {jax.process_count()} stopped {what}: another process "
                       f"failed or became unreachable ({text.splitlines()[0][:200]}). Restart all processes; "
                       "training resumes from the last checkpoint.")
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
        _hard_exit(1, f"process {jax.process_index()} of {jax.process_count()} failed {what}: "
                      f"{type(e).__name__}: {e}")


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
                _hard_exit(EXIT_STALLED,
                           f"process {jax.process_index()}: no {self.what} finished in {idle:.0f}s "
                           f"(limit {self.timeout_s:.0f}s); a peer may be stuck. Stopping.")

    def __enter__(self) -> "Watchdog":
        if self.timeout_s is not None:
            self._last = time.monotonic()
            self._thread = threading.Thread(target=self._run, name="alsx-watchdog", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


# ---------------------------------------------------------------------------- host collectives
# Small host-side collectives between processes, built on JAX's own (process_allgather and
# an all_to_all under shard_map over one device per process), used to assemble an input
# file that every process read a part of.  With one process each is the identity.


@functools.lru_cache(maxsize=None)
def _process_mesh():
    """A 1-D mesh ("proc") holding the lowest-id device of every process."""
    import jax
    import numpy as np
    from jax.sharding import Mesh

    first: dict[int, jax.Device] = {}
    for d in sorted(jax.devices(), key=lambda d: d.id):
        first.setdefault(d.process_index, d)
    return Mesh(np.array([first[p] for p in range(jax.process_count())]), ("proc",))


@functools.lru_cache(maxsize=None)
def _programs(mesh):
    """(psum, all_to_all) over the process mesh, jitted once (shapes are bucketed by the callers)."""
    import jax
    from jax.sharding import PartitionSpec as P

    psum = jax.jit(jax.shard_map(lambda x: jax.lax.psum(x, "proc"), mesh=mesh, in_specs=P("proc"), out_specs=P()))
    swap = jax.jit(jax.shard_map(lambda x: jax.lax.all_to_all(x, "proc", 0, 0, tiled=True), mesh=mesh,
                                 in_specs=P("proc"), out_specs=P("proc")))
    return psum, swap


def _bucket(n: int) -> int:
    """n rounded up to 1, 1.25, 1.5 or 1.75 times a power of two: a few compiled shapes
    serve every call, at most 25 % padding."""
    if n <= 4:
        return max(1, int(n))
    step = 1 << ((int(n) - 1).bit_length() - 3)
    return -(-int(n) // step) * step


def allgather_bytes(a):
    """Every process's 1-D array ``a`` (any fixed-size dtype, lengths may differ), in process order.

    Sent as raw bytes, so int64 and float64 survive without jax_enable_x64.
    """
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    a = np.ascontiguousarray(a)
    if jax.process_count() == 1:
        return [a]
    raw = a.reshape(-1).view(np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.array([raw.size], np.int32))).reshape(-1)
    buf = np.zeros(_bucket(int(sizes.max())), np.uint8)
    buf[: raw.size] = raw
    every = np.asarray(multihost_utils.process_allgather(buf)).reshape(len(sizes), -1)
    return [every[p, : sizes[p]].view(a.dtype).copy() for p in range(len(sizes))]


def allreduce_sum(a):
    """Element-wise sum over processes of int array ``a`` (same shape everywhere), as int64.

    Summed as int32 on the devices: each process's counts and the total must stay below 2**31.
    """
    import jax
    import numpy as np

    a = np.asarray(a)
    if jax.process_count() == 1:
        return a.astype(np.int64)
    if a.size and (np.abs(a).max() >= 2**31 // jax.process_count()):
        raise OverflowError("allreduce_sum: values too large for an int32 sum")
    from jax.sharding import NamedSharding, PartitionSpec as P

    mesh = _process_mesh()
    flat = np.zeros((1, _bucket(a.size)), np.int32)
    flat[0, : a.size] = a.reshape(-1)
    me = mesh.devices.reshape(-1)[jax.process_index()]
    glob = jax.make_array_from_single_device_arrays((mesh.size, flat.shape[1]), NamedSharding(mesh, P("proc")),
                                                    [jax.device_put(flat, me)])
    total = _programs(mesh)[0](glob)
    return np.asarray(total.addressable_data(0)).reshape(-1)[: a.size].reshape(a.shape).astype(np.int64)


def route(payload, dest, budget_bytes: int = 64 << 20):
    """Sends row ``k`` of ``payload`` [n, F] int32 to process ``dest[k]``; returns what this
    process received [m, F], ordered by sending process, each sender's rows in their order.

    An all-to-all over one device per process: each process sends each other one only the
    rows addressed to it (per-process traffic ~ its own rows, whatever the process count).
    Buffers are padded to the largest sender-receiver count, in rounds of at most
    ``budget_bytes`` per process.
    """
    import jax
    import numpy as np

    payload = np.ascontiguousarray(payload, np.int32)
    n_proc, me = jax.process_count(), jax.process_index()
    dest = np.asarray(dest, np.int64)
    if n_proc == 1:
        return payload
    from jax.sharding import NamedSharding, PartitionSpec as P

    F = payload.shape[1]
    order = np.argsort(dest, kind="stable")
    counts = np.bincount(dest, minlength=n_proc)
    starts = np.concatenate([[0], np.cumsum(counts)])
    table = np.stack(allgather_bytes(counts.astype(np.int64)))  # [sender, receiver]
    k_max = int(table.max())
    cap = _bucket(max(1, min(k_max, budget_bytes // max(1, n_proc * F * 4))))
    mesh = _process_mesh()
    device = mesh.devices.reshape(-1)[me]
    sharding = NamedSharding(mesh, P("proc"))
    swap = _programs(mesh)[1]
    got = []
    for lo in range(0, k_max, cap):
        buf = np.zeros((n_proc, cap, F), np.int32)
        for p in range(n_proc):
            take = order[starts[p] + lo: min(starts[p + 1], starts[p] + lo + cap)]
            buf[p, : len(take)] = payload[take]
        glob = jax.make_array_from_single_device_arrays((n_proc * n_proc, cap, F), sharding,
                                                        [jax.device_put(buf.reshape(n_proc, cap, F), device)])
        out = np.asarray(swap(glob).addressable_data(0)).reshape(n_proc, cap, F)  # block s came from sender s
        got.append([out[s, : max(0, min(cap, int(table[s, me]) - lo))] for s in range(n_proc)])
    return np.concatenate([blk for s in range(n_proc) for blk in (rnd[s] for rnd in got)] or
                          [np.zeros((0, F), np.int32)]).reshape(-1, F)
