"""Ids as a user gives them -> dense indices, and back: typed on the command line
(``alsx recommend MODEL ROW ...``) or passed to the estimator (``ALS.recommend(['u12'])``)."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from alsx.data.vocab import Vocab
from alsx.errors import UsageError


def _listed(bad: list[str]) -> str:
    return ", ".join(repr(b) for b in bad[:5]) + (f", ... ({len(bad)} in all)" if len(bad) > 5 else "")


def row_indices(given: list[str], vocab: Vocab | None, n_rows: int, where: str) -> np.ndarray:
    """int64 dense indices of the row ids ``given`` (strings, as typed).

    ``vocab``: the model's row vocabulary, None for an index model (rows 0..n_rows-1);
    ``where``: the model folder, for the message.

    Raises:
      UsageError: naming the ids that are not integers (for integer ids) or not in the model.
    """
    if vocab is not None and vocab.kind == "str":
        known = vocab.encode(np.asarray(given, dtype=str), missing=-1)
    else:
        bad = [g for g in given if not g.strip().lstrip("+-").isdigit()]
        if bad:
            raise UsageError(
                f"row id(s) {_listed(bad)}: not integers, and the rows of the model {where} have integer ids"
            )
        try:
            ints = np.asarray([int(g) for g in given], dtype=np.int64)
        except OverflowError:
            raise UsageError(
                f"row id(s) {_listed([g for g in given if abs(int(g)) >= 2**63])} not in the model "
                f"{where} (beyond 64-bit integers)"
            ) from None
        if vocab is not None:
            known = vocab.encode(ints, missing=-1)
        else:
            known = np.where((ints >= 0) & (ints < n_rows), ints, -1)
    unknown = [g for g, k in zip(given, known, strict=True) if k < 0]
    if unknown:
        span = "" if vocab is not None else f" (its rows are 0..{n_rows - 1})"
        raise UsageError(f"row id(s) {_listed(unknown)} not in the model {where}{span}")
    return np.asarray(known, dtype=np.int64)


# ---------------------------------------------------------------- the estimator's ids (alsx.ALS)
IdSpace = Literal["original", "index"]
Unknown = Literal["raise", "skip"]


class UnknownIdError(UsageError, KeyError):
    """Ids that are not in the model (a UsageError and a KeyError); ``ids`` holds them."""

    def __init__(self, message: str, ids: list):
        super().__init__(message)
        self.ids = ids

    __str__ = Exception.__str__  # KeyError would print the message in quotes


def to_indices(
    given: Any, vocab: Vocab | None, n: int, what: str, *, ids: IdSpace = "original", unknown: Unknown = "raise"
) -> tuple[np.ndarray, np.ndarray]:
    """Dense indices of ids as a library user passes them.

    Args:
      given: one id or a sequence/array [m] of them: original ids (the vocabulary's int or str
        ids; plain indices 0..n-1 for a model without vocabulary), or dense indices with
        ``ids="index"``.
      vocab: that side's vocabulary, or None.
      n: rows of that side's table.
      what: "row" or "column", for the message.
      unknown: "raise" (one UnknownIdError naming them) or "skip" (marked in ``known``).

    Returns:
      (indices int64 [m], -1 where unknown; known bool [m]).
    """
    arr = np.asarray(given)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise UsageError(f"{what} ids must be one id or a one-dimensional sequence, got shape {arr.shape}")
    if ids not in ("original", "index"):
        raise UsageError(f"ids= must be 'original' or 'index', got {ids!r}")
    if unknown not in ("raise", "skip"):
        raise UsageError(f"unknown= must be 'raise' or 'skip', got {unknown!r}")
    if arr.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, bool)
    if ids == "original" and vocab is not None:
        try:
            out = vocab.encode(arr, missing=-1).astype(np.int64)
        except ValueError as e:  # str ids for an int vocabulary or the other way round
            raise UsageError(f"{what} ids: {e} (pass ids='index' for dense indices)") from None
    else:
        if arr.dtype.kind not in "iu":
            hint = "" if ids == "index" else " (this model has no vocabulary: its ids are the indices)"
            raise UsageError(
                f"{what} {'indices' if ids == 'index' else 'ids'} must be integers, got "
                f"{_listed([str(a) for a in arr[:6].tolist()])}{hint}"
            )
        out = np.where((arr >= 0) & (arr < n), arr, -1).astype(np.int64)
    known = out >= 0
    if unknown == "raise" and not known.all():
        bad = arr[~known].tolist()
        span = f" (indices 0..{n - 1})" if ids == "index" or vocab is None else ""
        raise UnknownIdError(f"{len(bad)} {what} id(s) not in the model: {_listed(bad)}{span}", bad)
    return out, known


def to_ids(indices: np.ndarray, vocab: Vocab | None, ids: IdSpace = "original") -> np.ndarray:
    """Original ids of dense ``indices`` (any shape, -1 = no result): the vocabulary's int64 or str
    ids, padding -1 (int) or "" (str); the indices themselves (int32) without vocabulary or with
    ``ids="index"``."""
    if ids == "index" or vocab is None:
        return indices
    table = vocab.ids
    pad = "" if vocab.kind == "str" else -1
    out = np.where(indices >= 0, table[np.maximum(indices, 0)] if len(table) else pad, pad)
    return out.astype(table.dtype) if len(table) else out
