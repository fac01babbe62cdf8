"""alsx.core.dispatch.bounded: results in order, never more than ``window`` launched and unconsumed.

The deadlock it prevents needs many emulated devices: tests/test_sharded.py
(``test_eight_devices_evaluate_in_many_batches_like_one_device``) runs that case.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from alsx.core.dispatch import MAX_IN_FLIGHT, bounded


@pytest.mark.parametrize("window,n", [(1, 5), (3, 10), (MAX_IN_FLIGHT, 2), (MAX_IN_FLIGHT, 40)])
def test_bounded_keeps_order_and_at_most_window_in_flight(window, n):
    launched, consumed, queued = [], [], []

    def launches():
        for i in range(n):
            queued.append(len(launched) - len(consumed))  # launched, not yet handed out
            launched.append(i)
            yield {"x": jnp.full((3,), float(i)), "i": jnp.asarray(i)}

    got = []
    for out in bounded(launches(), window):
        consumed.append(int(out["i"]))
        got.append(np.asarray(out["x"]))
    assert consumed == list(range(n))
    assert all(np.array_equal(g, np.full(3, float(i))) for i, g in enumerate(got))
    assert max(queued) <= window - 1  # so at most `window` are queued once the new one launches
    assert MAX_IN_FLIGHT < 32  # XLA:CPU's max_inflight_computations_per_device


def test_bounded_rejects_an_empty_window():
    with pytest.raises(ValueError, match="window must be >= 1"):
        list(bounded(iter([]), 0))
