"""JAX's persistent compilation cache, under the user's cache folder.

Each bucket of a half-step is one XLA program that takes about a second to compile on a
CPU; with the cache a second run on the same shapes loads them from disk instead
(benchmarks/results_compile.md).  Both the ``alsx`` command and the library's
``make_engine`` (so ``ALS.fit``) turn it on.  The folder is ``$ALSX_CACHE_DIR``, else
``$XDG_CACHE_HOME/alsx/jax``, else ``~/.cache/alsx/jax``; ``ALSX_CACHE_DIR=""`` turns the
cache off.  A folder the user set through ``jax.config`` themselves is left alone.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

ENV = "ALSX_CACHE_DIR"
MIN_COMPILE_SECONDS = 0.1
"""Programs that compile faster than this are not written (a bucket program takes 0.3-1 s)."""


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
