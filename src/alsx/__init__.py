"""alsx: implicit alternating least squares (iALS) in JAX."""

import os as _os

# XLA's CPU Cholesky calls LAPACK from scipy's OpenBLAS on XLA's own worker threads, which
# already use every core: one BLAS thread per caller avoids oversubscription. (The hang once
# blamed on this came from jaxlib's batched kernels; see alsx.core.solvers.cholesky.)
_os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import alsx.tune as tune  # a module you can call: alsx.tune(data, dim=64, minutes=5) is alsx.tune.tune(...)
from alsx.config import HParams, Packing
from alsx.model import ALS

__version__ = "0.1.0"

__all__ = ["ALS", "HParams", "Packing", "tune", "__version__"]
