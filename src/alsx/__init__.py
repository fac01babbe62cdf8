"""alsx: implicit alternating least squares (iALS) in JAX."""

from alsx.config import HParams
from alsx.config import Packing
from alsx.model import ALS

__version__ = "0.1.0"

__all__ = ["ALS", "HParams", "Packing", "__version__"]
