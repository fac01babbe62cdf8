"""Wall-clock helpers of the profilers: best-of-n timings and the machine's float32 matmul rate."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp


def best_seconds(fn, repeat: int = 3) -> float:
    """Least wall time of ``repeat`` calls of ``fn()`` after one warm-up call (compiles, faults pages in)."""
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def timed(fn, *args, repeat: int = 2, fresh_first: bool = False) -> float:
    """Best wall time of ``fn(*args)``; ``fresh_first`` copies a donated first argument each run."""

    def call():
        a = (jnp.array(args[0], copy=True),) + args[1:] if fresh_first else args
        jax.block_until_ready(a[0])
        t = time.perf_counter()
        jax.block_until_ready(fn(*a))
        return time.perf_counter() - t

    call()  # compile and warm up
    return min(call() for _ in range(repeat))


def sgemm_rate(n: int = 2048) -> float:
    """Measured float32 FLOP/s of an n x n matrix product on the default device."""
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    return 2 * n**3 / timed(f, a, repeat=3)
