"""Hyper-parameters as small frozen dataclasses, checked on construction."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

Solver = Literal["cg", "cholesky", "block"]
DType = Literal["float32", "bfloat16"]
Init = Literal["normal", "uniform"]

#: Training backends (``alsx.core.backends.resolve_backend``).
BACKENDS = ("auto", "cpu", "jax")


@dataclasses.dataclass(frozen=True)
class HParams:
    """What the iALS objective and its solver need.

    Attributes:
      dim: embedding dimension d.
      reg: lambda, the regularisation weight.
      unobserved_weight: alpha0, the weight of the all-pairs push towards 0 (through the Gramian).
      nu: frequency-scaling exponent; lambda_u = reg * (|I_u| + alpha0 * n_other) ** nu.
        0 gives plain ALS regularisation, 1 the scaling of Rendle et al. (2021).
      solver: 'cg' (warm-started conjugate gradient, ``cg_steps`` steps), 'cholesky' (exact)
        or 'block' (iALS++: one sweep of exact updates of ``block_size``-dim subspaces).
      cg_steps: CG iterations per row and half-epoch.
      block_size: subspace size of the 'block' solver (must divide dim); 0 lets the backend choose
        (see :meth:`block_width`).
      dtype: table storage dtype; the normal equations are always float32.
      init_scale: sigma; tables start as N(0, sigma / sqrt(dim)), or U[0, 2 sigma / sqrt(dim)).
      init: 'normal' (Rendle et al.) or 'uniform' (all-positive start, as implicit draws its tables).
    """

    dim: int = 128
    reg: float = 0.003
    unobserved_weight: float = 0.03
    nu: float = 1.0
    solver: Solver = "cg"
    cg_steps: int = 3
    block_size: int = 0
    dtype: DType = "float32"
    init_scale: float = 0.1
    init: Init = "normal"

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ValueError(f"dim must be >= 1, got {self.dim}")
        if self.reg < 0 or self.unobserved_weight < 0 or self.nu < 0:
            raise ValueError(
                f"reg, unobserved_weight and nu must be >= 0, got {self.reg}, {self.unobserved_weight}, {self.nu}"
            )
        if self.solver not in ("cg", "cholesky", "block"):
            raise ValueError(f"solver must be 'cg', 'cholesky' or 'block', got {self.solver!r}")
        if self.block_size < 0 or (self.solver == "block" and self.block_size and self.dim % self.block_size):
            raise ValueError(
                f"block_size must be 0 (backend's choice) or divide dim for the block solver, "
                f"got {self.block_size} and {self.dim}"
            )
        if self.cg_steps < 1:
            raise ValueError(f"cg_steps must be >= 1, got {self.cg_steps}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")
        if self.init_scale <= 0:
            raise ValueError(f"init_scale must be > 0, got {self.init_scale}")
        if self.init not in ("normal", "uniform"):
            raise ValueError(f"init must be 'normal' or 'uniform', got {self.init!r}")

    @classmethod
    def from_args(cls, args: Any) -> HParams:
        """The hyper-parameters named by the attributes of ``args`` (an argparse namespace, an
        estimator): every field of HParams, read by its own name."""
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})

    def block_width(self, backend: str) -> int:
        """Subspace size the 'block' solver uses on ``backend`` ('cpu' or 'jax'); 0 for the other solvers.

        An explicit ``block_size`` wins. Otherwise the CPU kernels take 1 (one fused pass per
        coordinate: 0.70x a CG-3 kernel at d=1024, blocks of 8 cost 1.5x, benchmarks/RESULTS.md), and
        JAX takes the largest divisor of dim up to 64 (batched b x b solves keep the vector units busy).
        """
        if self.solver != "block":
            return 0
        if self.block_size:
            return self.block_size
        if backend == "cpu":
            return 1
        return max(b for b in range(1, min(64, self.dim) + 1) if self.dim % b == 0)


@dataclasses.dataclass(frozen=True)
class Packing:
    """How sparse rows become fixed-shape blocks.

    Attributes:
      batch_entries: target padded entries per block (rows x width); sized so that the
        gathered block (batch_entries x dim floats) stays near the L2 cache.
      n_buckets: at most this many block widths, chosen from the row-length histogram
        to minimise padding (each width is one compiled program per side); 0 (auto):
        up to ``max_buckets``, each width kept only if it saves ``bucket_saving``
        padded entries (on small inputs a compile costs more than the padding it saves).
      max_buckets, bucket_saving: the auto choice (see ``alsx.data.packing.side_widths``).
      min_width: narrowest block width (shorter rows are padded to it).
      max_width: rows longer than this are "long": their normal equations are summed
        over sub-rows of this width (any length works, no "row too long" error).
      max_dense_bytes: memory bound for per-row d x d matrices held at once.
    """

    batch_entries: int = 0  # 0 = chosen from dim
    n_buckets: int = 0
    max_buckets: int = 10
    bucket_saving: int = 200_000
    min_width: int = 1
    max_width: int = 1024
    max_dense_bytes: int = 64 << 20

    def entries_for(self, dim: int) -> int:
        if self.batch_entries:
            return self.batch_entries
        # ~2 MiB of gathered float32 rows per block, at least one widest row.
        return max(self.max_width, (2 << 20) // (4 * dim))


#: ``reg`` / ``unobserved_weight`` value that derives the weight from the training matrix (``resolve_weights``).
AUTO = "auto"

#: 'auto' alpha0 = UNOBSERVED_RATIO * nnz / (n_rows * n_cols): all unobserved pairs together weigh this many
#: times the observed entries, whatever the density.  The tuned alpha0 of every shared data set (1e-4 on cnr-2000
#: to 0.4 on ml1m) sits within a few times of one ratio (benchmarks/results_defaults.md).
UNOBSERVED_RATIO = 12.0

#: 'auto' reg = REG_RATIO * alpha0: with nu = 1 the regulariser then keeps the same proportion to a row's
#: unobserved term on every data set (benchmarks/results_defaults.md).
REG_RATIO = 0.01


def resolve_weights(
    reg: float | str,
    unobserved_weight: float | str,
    nnz: int,
    shape: tuple[int, int],
    unobserved_ratio: float = UNOBSERVED_RATIO,
    reg_ratio: float = REG_RATIO,
) -> tuple[float, float]:
    """(reg, alpha0) with 'auto' replaced from the training matrix's ``nnz`` and ``shape`` (rows, cols):
    alpha0 = unobserved_ratio * nnz / (rows * cols), reg = reg_ratio * alpha0 (the given alpha0 or the 'auto' one).

    Any other string, or a ratio <= 0, is a ValueError naming it.
    """
    for name, v in (("reg", reg), ("unobserved_weight", unobserved_weight)):
        if isinstance(v, str) and v != AUTO:
            raise ValueError(f"{name} must be a number or {AUTO!r}, got {v!r}")
    for name, v in (("unobserved_ratio", unobserved_ratio), ("reg_ratio", reg_ratio)):
        if not v > 0:
            raise ValueError(f"{name} must be > 0, got {v}")
    if unobserved_weight == AUTO:
        cells = max(1, int(shape[0]) * int(shape[1]))
        unobserved_weight = unobserved_ratio * max(int(nnz), 1) / cells
    if reg == AUTO:
        reg = reg_ratio * float(unobserved_weight)
    return float(reg), float(unobserved_weight)


#: ``alsx tune`` and ``--early-stopping`` (alsx.validation, alsx.tune): the share of each training row carved out
#: for validation, the metric maximised on it, the trials of a search given neither --trials nor --minutes, and
#: the trial pruners.  Here, not in alsx.tune, so the CLI's flags read them without importing the model (JAX).
VALIDATION_FRACTION = 0.2
METRIC = "recall@20"
#: Validation rows a search scores per evaluation (a seeded sample of the carve's rows when it has more): full
#: ranking costs rows x columns x d, ~95 % of a trial on gowalla at d=256 (9.5 s per evaluation of 29,858 rows
#: against 0.33 s per epoch), and 10k rows already bound Recall@20's standard error near +-0.002.
SEARCH_EVAL_ROWS = 10_000
#: The final pick of a search: its best PICK_TRIALS trials re-scored on PICK_CARVES more carves (other seeds), the
#: best mean wins (near the optimum one carve's ranking is noise: alsx.tune, benchmarks/results_tune.md).
PICK_TRIALS = 4
PICK_CARVES = 2
DEFAULT_TRIALS = 20
PRUNERS = ("hyperband", "halving", "none")

#: Training settings beside the hyper-parameters.
TRAINING_DEFAULTS = {"epochs": 16, "seed": 0, "loss_every": 1, "backend": "auto"}

#: Every default of a model, in one place: HParams' fields, with reg and alpha0 'auto' (HParams holds the numbers
#: engines use; its own defaults serve code that builds one without data), and TRAINING_DEFAULTS (measured: see
#: README "Defaults" and benchmarks/RESULTS.md).  ALS's signature and the CLI's flags read them here.
DEFAULTS = {
    **{f.name: f.default for f in dataclasses.fields(HParams)},
    "reg": AUTO,
    "unobserved_weight": AUTO,
    "unobserved_ratio": UNOBSERVED_RATIO,
    "reg_ratio": REG_RATIO,
    **TRAINING_DEFAULTS,
}
