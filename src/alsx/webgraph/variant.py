"""Which WebGraph variant a builder writes: :class:`Variant`, the options every builder shares.

``build_webgraph``, ``synth_webgraph`` and ``build_webgraph_spark`` all filter a graph,
split it and write it the same way; :class:`Variant` names those options once and the
stages (:mod:`alsx.webgraph.stage`, :mod:`alsx.webgraph.finalize`) take it whole.  The
builders accept ``variant=`` or the fields as keyword arguments (``min_degree=50``).
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from alsx.webgraph.csr_writers import DEFAULT_BLOCK_NNZ, DEFAULT_MAX_SHARD_NNZ

#: Edges per ingest / generation chunk (int64 pairs: 16 bytes each, plus sort temporaries).
DEFAULT_CHUNK_EDGES = 1 << 23
#: Entries of one in-RAM row bucket while filling a CSR (1 GiB of int32 per orientation).
DEFAULT_FILL_BUDGET_NNZ = 1 << 28

#: A callable returning a fresh iterable of (src, dst) int [m] edge chunks (the same edges every time).
EdgeChunks = Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]


@dataclasses.dataclass(frozen=True)
class Variant:
    """One WebGraph variant (e.g. ``Variant(min_degree=50)``): what is kept, the held-out split, the files.

    Attributes:
      min_degree: K; a kept node needs >= K in-links and >= K out-links (0: no filter).
      fixed_point: iterate the degree filter until stable (ALX applies it once).
      keep_self_links: keep links u -> u (they are counted either way).
      heldout_fraction: share of rows held out of training (rows with >= 2 links);
        ``synth_webgraph`` defaults to 0.
      history_fraction: share of a held-out row's links given as history (folded in).
      seed: split seed (``synth_webgraph``: also the generator's).
      max_shard_nnz: entries per shard file.
      block_nnz: entries per sort / scan block (not for Spark).
      fill_budget_nnz: entries per in-RAM row bucket when building CSRs (not for Spark).
      progress: show progress bars (not for Spark).
    """

    min_degree: int = 0
    fixed_point: bool = False
    keep_self_links: bool = True
    heldout_fraction: float = 0.1
    history_fraction: float = 0.8
    seed: int = 0
    max_shard_nnz: int = DEFAULT_MAX_SHARD_NNZ
    block_nnz: int = DEFAULT_BLOCK_NNZ
    fill_budget_nnz: int = DEFAULT_FILL_BUDGET_NNZ
    progress: bool = False

    @property
    def needs_finalize(self) -> bool:
        """Whether anything is filtered or split (otherwise the staged graph is the dataset)."""
        return self.min_degree > 0 or not self.keep_self_links or self.heldout_fraction > 0

    def filter_params(self) -> dict[str, Any]:
        """The filter and split fields, in the order the manifests list them."""
        return {
            "min_degree": self.min_degree,
            "fixed_point": self.fixed_point,
            "keep_self_links": self.keep_self_links,
            "heldout_fraction": self.heldout_fraction,
            "history_fraction": self.history_fraction,
        }

    def split_params(self, n_heldout: int) -> dict[str, Any]:
        """The manifest's ``split`` entry (without its rule)."""
        return {
            "heldout_fraction": self.heldout_fraction,
            "history_fraction": self.history_fraction,
            "seed": self.seed,
            "n_heldout": n_heldout,
        }


_FIELDS = tuple(f.name for f in dataclasses.fields(Variant))
SPARK_FIELDS = (
    "min_degree",
    "fixed_point",
    "keep_self_links",
    "heldout_fraction",
    "history_fraction",
    "seed",
    "max_shard_nnz",
)


def variant_of(
    variant: Variant | None,
    options: Mapping[str, Any],
    caller: str,
    *,
    allowed: tuple[str, ...] = _FIELDS,
    **defaults: Any,
) -> Variant:
    """``variant`` (default: ``Variant(**defaults)``) with the fields in ``options`` replaced.

    Raises:
      TypeError: an option that is not an ``allowed`` field, as for an unknown keyword of ``caller``.
    """
    for name in options:
        if name not in allowed:
            raise TypeError(f"{caller}() got an unexpected keyword argument {name!r}")
    base = Variant(**defaults) if variant is None else variant
    return dataclasses.replace(base, **options)


def progress_bar(progress: bool, **kw: Any):
    """A tqdm bar, disabled unless ``progress``."""
    return tqdm(disable=not progress, **kw)


def prepare_out(out_dir: Path, overwrite: bool) -> None:
    """Creates ``out_dir``; an existing non-empty one is an error unless ``overwrite`` (then it is emptied)."""
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out_dir} is not empty; pass overwrite=True to replace it")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
