"""Row ids as a user types them (``alsx recommend MODEL ROW ...``) -> dense row indices."""

from __future__ import annotations

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
            raise UsageError(f"row id(s) {_listed(bad)}: not integers, and the rows of the model {where} have "
                             "integer ids")
        try:
            ints = np.asarray([int(g) for g in given], dtype=np.int64)
        except OverflowError:
            raise UsageError(f"row id(s) {_listed([g for g in given if abs(int(g)) >= 2**63])} not in the model "
                             f"{where} (beyond 64-bit integers)") from None
        if vocab is not None:
            known = vocab.encode(ints, missing=-1)
        else:
            known = np.where((ints >= 0) & (ints < n_rows), ints, -1)
    unknown = [g for g, k in zip(given, known) if k < 0]
    if unknown:
        span = "" if vocab is not None else f" (its rows are 0..{n_rows - 1})"
        raise UsageError(f"row id(s) {_listed(unknown)} not in the model {where}{span}")
    return np.asarray(known, dtype=np.int64)
