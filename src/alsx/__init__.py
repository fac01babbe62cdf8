"""alsx: implicit alternating least squares (iALS) in JAX."""

__version__ = "0.1.0"
