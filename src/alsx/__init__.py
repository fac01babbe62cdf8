"""alsx: implicit alternating least squares (iALS) in JAX.

``ALS`` and ``tune`` load on first use (PEP 562 ``__getattr__``): ``import alsx`` and the
``alsx`` command's argument parsing and checks do not import JAX, Numba or Optuna
(benchmarks/results_startup.md).  ``from alsx import ALS`` and ``alsx.ALS`` work as before.
"""

from __future__ import annotations

import os as _os
from typing import TYPE_CHECKING

# XLA's CPU Cholesky calls LAPACK from scipy's OpenBLAS on XLA's own worker threads, which
# already use every core: one BLAS thread per caller avoids oversubscription. (The hang once
# blamed on this came from jaxlib's batched kernels; see alsx.core.solvers.cholesky.)
_os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from alsx.config import HParams, Packing  # noqa: E402 - dataclasses only, no JAX

if TYPE_CHECKING:
    import alsx.tune as tune
    from alsx.model import ALS

__version__ = "0.1.0"

__all__ = ["ALS", "HParams", "Packing", "tune", "__version__"]


def __getattr__(name: str):
    """The public names that import JAX, loaded when first asked for."""
    if name == "ALS":
        from alsx.model import ALS

        globals()["ALS"] = ALS  # later look-ups skip this function
        return ALS
    if name == "tune":
        import alsx.tune as tune  # a module you can call: alsx.tune(data, dim=64, minutes=5) is alsx.tune.tune(...)

        return tune  # importing the submodule also sets alsx.tune
    raise AttributeError(f"module 'alsx' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
