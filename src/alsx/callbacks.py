"""What a training callback may do besides watching: stop the run.

A callback (``ALS.fit(callback=...)``, the CLI's epoch hooks, ``alsx tune``'s pruner) is called
after every epoch with that epoch's history record and state. Raising :class:`StopTraining`
ends the run after that epoch without losing the model: the run returns normally with the
tables of the last finished epoch, or with the tables the exception carries (early stopping
hands back its best epoch's).
"""

from __future__ import annotations

import numpy as np


class StopTraining(Exception):
    """Raised by a callback to end training cleanly after the current epoch.

    Args:
      reason: one line for logs and ``history``, e.g. "no better recall@20 for 3 evaluations".
      tables: optional (row table [n_rows, d], column table [n_cols, d]) host copies to keep
        instead of the current epoch's, e.g. the best epoch's.
      epoch: the epoch ``tables`` come from (required with ``tables``).
    """

    def __init__(
        self,
        reason: str = "stopped by a callback",
        tables: tuple[np.ndarray, np.ndarray] | None = None,
        epoch: int | None = None,
    ):
        super().__init__(reason)
        if tables is not None and epoch is None:
            raise ValueError("StopTraining(tables=...) needs the epoch the tables come from")
        self.reason = reason
        self.tables = tables
        self.epoch = epoch
