import os, sys, pathlib

# Before any test module imports numpy or jax: one OpenBLAS thread per caller, as alsx
# sets for itself when it is imported first.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(pathlib.Path(__file__).parent))
