"""How alsx's XLA programs compile: the persistent cache under the user's cache folder, and
cheaper XLA options for the programs it runs on a CPU.

Each bucket of a half-step is one XLA program that takes about a second to compile on a
CPU; with the cache a second run on the same shapes loads them from disk instead
(benchmarks/results_compile.md).  Both the ``alsx`` command and the library's
``make_engine`` (so ``ALS.fit``) turn it on.  The folder is ``$ALSX_CACHE_DIR``, else
``$XDG_CACHE_HOME/alsx/jax``, else ``~/.cache/alsx/jax``; ``ALSX_CACHE_DIR=""`` turns the
cache off.  A folder the user set through ``jax.config`` themselves is left alone.

On a CPU, most of a cold start is LLVM optimising the kernels of each program, not running
them: :func:`cpu_jit` compiles the engine's programs with :data:`CPU_OPTIONS`, which halves
the compile seconds and runs the epoch as fast (benchmarks/results_compile.md).
``ALSX_XLA_CPU_OPTIONS=0`` compiles them with XLA's defaults instead (read at each call).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

ENV = "ALSX_CACHE_DIR"
OPTIONS_ENV = "ALSX_XLA_CPU_OPTIONS"
MIN_COMPILE_SECONDS = 0.1
"""Programs that compile faster than this are not written (a bucket program takes 0.3-1 s)."""

CPU_OPTIONS = {"xla_backend_optimization_level": 1, "xla_cpu_use_fusion_emitters": False}
"""XLA options of :func:`cpu_jit` programs on a CPU: LLVM at -O1 instead of -O3 and XLA's loop
emitters instead of its MLIR fusion emitters.  On the 4 bucket programs of a 135k-entry input,
and the 18 of cnr-2000, they cut the compile CPU seconds by about half; the half-steps run
as fast (the kernels are memory-bound gathers and batched dots; benchmarks/results_compile.md)."""


def cache_dir() -> str | None:
    """The cache folder the environment asks for, or None when it turns the cache off."""
    if ENV in os.environ:
        return os.environ[ENV] or None
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "alsx" / "jax")


def enable_compile_cache(path: str | None = None) -> str | None:
    """Points JAX's persistent compilation cache at ``path`` (default :func:`cache_dir`).

    Call it before the first compile of the process: JAX reads the setting once, when it
    first compiles.  Returns the folder in use, or None when the cache is off.
    """
    import jax

    path = cache_dir() if path is None else (path or None)
    if path is None:
        return None
    current = getattr(jax.config, "jax_compilation_cache_dir", None)
    if current and current != path:  # the caller chose a folder: theirs wins
        return current
    if not current:
        jax.config.update("jax_compilation_cache_dir", path)
        try:  # an option of jax >= 0.4.2x; a jax without it caches with its own threshold
            jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
        except AttributeError:  # pragma: no cover - depends on the jax version
            log.debug("this jax has no jax_persistent_cache_min_compile_time_secs")
        log.debug("JAX compilation cache: %s", path)
    return path


def request_compile_cache() -> str | None:
    """:func:`enable_compile_cache` without importing JAX: called before JAX is imported, it sets the
    environment variables JAX reads its settings from when it loads (``JAX_COMPILATION_CACHE_DIR``,
    ``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS``; ones already set win), so the ``alsx`` command pays for
    JAX only in the commands that use it.  Once JAX is loaded it is :func:`enable_compile_cache`.
    """
    if "jax" in sys.modules:
        return enable_compile_cache()
    path = cache_dir()
    if path is None:
        return None
    path = os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", path)  # the user's folder wins, as in jax.config
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", str(MIN_COMPILE_SECONDS))
    return path


def cpu_jit(fn: Callable | None = None, **jit_kwargs) -> Callable:
    """``jax.jit(fn, **jit_kwargs)`` that compiles with :data:`CPU_OPTIONS` when the default backend is
    a CPU and it is called with concrete arrays (options are for top-level programs only: called
    inside another ``jit`` or ``shard_map``, it inlines as a plain ``jax.jit`` does), unless
    ``$ALSX_XLA_CPU_OPTIONS`` is ``0``.

    Use as ``@cpu_jit`` or ``@functools.partial(cpu_jit, static_argnames=...)``.  The two jitted
    functions behind it are its attributes ``quick`` (with the options) and ``plain``.
    """
    if fn is None:
        return functools.partial(cpu_jit, **jit_kwargs)
    import jax

    plain = jax.jit(fn, **jit_kwargs)
    quick = jax.jit(fn, compiler_options=CPU_OPTIONS, **jit_kwargs)

    @functools.wraps(fn)
    def call(*args, **kwargs):
        nested = any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves((args, kwargs)))
        cheap = not nested and jax.default_backend() == "cpu" and os.environ.get(OPTIONS_ENV) != "0"
        return (quick if cheap else plain)(*args, **kwargs)

    call.quick, call.plain = quick, plain
    return call
