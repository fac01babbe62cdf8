"""alsx: implicit alternating least squares (iALS) in JAX."""

import os as _os

# XLA's CPU Cholesky calls LAPACK from scipy's OpenBLAS on XLA's own worker threads, which
# already use every core: one BLAS thread per caller avoids oversubscription and is faster
# for the small d x d solves. (The deadlock once blamed on this came from jaxlib's batched
# kernels waiting on XLA's thread pool; see alsx.core.solvers.cholesky.)
_os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def _one_lapack_thread() -> None:
    # The variable above is read only when OpenBLAS loads; if jax (hence scipy's OpenBLAS,
    # which jaxlib's LAPACK kernels call) was imported first, limit that library now.
    # NumPy's own BLAS is left as the user configured it.
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        return
    for lib in ThreadpoolController().lib_controllers:
        if lib.internal_api == "openblas" and "scipy.libs" in lib.filepath and lib.num_threads != 1:
            lib.set_num_threads(1)


_one_lapack_thread()

from alsx.config import HParams
from alsx.config import Packing
from alsx.model import ALS

__version__ = "0.1.0"

__all__ = ["ALS", "HParams", "Packing", "__version__"]
