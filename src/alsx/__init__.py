"""alsx: implicit alternating least squares (iALS) in JAX."""

import os as _os

# XLA's CPU Cholesky calls LAPACK from scipy's OpenBLAS on its own worker threads; a
# multi-threaded OpenBLAS there deadlocked here (main thread waiting on a result that never
# came). One BLAS thread per caller is also faster for the tiny batched d x d solves.
_os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from alsx.config import HParams
from alsx.config import Packing
from alsx.model import ALS

__version__ = "0.1.0"

__all__ = ["ALS", "HParams", "Packing", "__version__"]
