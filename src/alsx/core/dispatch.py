"""Bounded asynchronous dispatch of multi-device programs.

JAX dispatches asynchronously: a Python loop that calls a jitted program per batch
and reads the results only at the end queues every batch at once.  On XLA:CPU this
deadlocks a program with collectives once more than 32 are queued per device:

* a multi-device launch runs one launch task per device on the client's thread pool,
  which holds max(cores, devices) threads (8 for 8 emulated devices on 2 cores), and a
  collective needs every device's task running on its own pool thread at once;
* each launch task first takes a slot of its device's in-flight semaphore
  (``max_inflight_computations_per_device``, 32, not settable from JAX), and waits on
  the pool thread while the device has 32 computations queued;
* those queued computations need pool threads to run, so the rendezvous of the oldest
  one gets fewer than P threads ("Expected 8 threads to join the rendezvous, but only 5
  of them arrived") and XLA aborts after 40 s.

With enough cores the pool has spare threads and the loop only runs ahead; with more
devices than spare threads it hangs.  :func:`bounded` keeps at most ``window`` programs
queued, so a launch never waits for a semaphore slot and no pool thread blocks outside
a rendezvous.  One device or one batch is unaffected, and results are those of the
unbounded loop: only the time at which the host waits changes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from typing import TypeVar

import jax

T = TypeVar("T")

MAX_IN_FLIGHT = 4
"""Programs a dispatch loop keeps queued: far below XLA:CPU's 32 per device, enough to
keep the devices busy while the host prepares the next batch."""


def bounded(launches: Iterable[T], window: int = MAX_IN_FLIGHT) -> Iterator[T]:
    """Yields each result of ``launches`` once it is ready, in order, with at most ``window`` queued.

    ``launches`` must be lazy (a generator that dispatches one program per item): the
    next item is dispatched only after the oldest of ``window`` queued ones has finished.

    Args:
      launches: an iterable whose items are pytrees of jax arrays (the outputs of one call).
      window: at most this many launched and unfinished calls (>= 1).
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    pending: deque = deque()
    for out in launches:
        pending.append(out)
        if len(pending) >= window:
            yield jax.block_until_ready(pending.popleft())
    while pending:
        yield jax.block_until_ready(pending.popleft())
