"""What every reader of :mod:`alsx.data.ingest` returns, and the errors and summary it reports.

A reader turns one source (a text file, Parquet, npz, a DataFrame, arrays) into a
:class:`Raw`: its columns by role (row, col, value, timestamp, is_test), checked for
type where they were read, plus how to name an entry's line or row in a message.
:mod:`alsx.data.validate` then turns a ``Raw`` into :class:`~alsx.data.matrix.Interactions`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from alsx.data.vocab import Vocab
from alsx.errors import DataError

INT32_MAX = int(np.iinfo(np.int32).max)

ColumnRef = int | str | None
Location = Callable[[Sequence[int]], list[str]]


class IngestError(DataError):
    """Bad input data; the message names the source, the line or row, and the value."""


class InputNotFound(IngestError, FileNotFoundError):
    """The input path does not exist (still a FileNotFoundError for callers that catch that)."""


@dataclasses.dataclass(frozen=True)
class IngestSummary:
    """What happened to each entry read.

    ``rows_read == kept + merged_duplicates + dropped_zeros + rejected``.
    ``rejected`` is always 0 today (bad entries raise); it is kept for reports.
    """

    source: str
    rows_read: int
    kept: int
    merged_duplicates: int
    dropped_zeros: int
    rejected: int
    n_rows: int
    n_cols: int
    columns: str | None = None  # which columns were read for what, e.g. "row = column 'user' (header line 1)"

    def __str__(self) -> str:
        return (
            f"{self.source}: read {self.rows_read:,} entries, kept {self.kept:,} "
            f"({self.merged_duplicates:,} duplicates merged, {self.dropped_zeros:,} zeros dropped, "
            f"{self.rejected:,} rejected); matrix {self.n_rows:,} x {self.n_cols:,}"
            + (f"; {self.columns}" if self.columns else "")
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# A parsed id column: integer indices (numpy) or string ids (numpy <U or arrow strings).
IdColumn = np.ndarray | pa.ChunkedArray


@dataclasses.dataclass
class Raw:
    """Columns as read from a source, before validation. All have length n."""

    source: str
    rows: IdColumn
    cols: IdColumn
    values: np.ndarray | None  # float64 or float32 [n], or None for binary input
    timestamps: np.ndarray | None  # int64 [n]
    is_test: np.ndarray | None  # bool [n]
    labels: dict[str, str]  # role -> how to name its column in messages
    locate: Location  # positions -> "line 5 ('a,b,1')" / "row 5"
    shape: tuple[int, int] | None = None  # declared by the source (npz, scipy)
    native_index: bool = False  # npz / scipy: ids='auto' means 'index'
    row_vocab: Vocab | None = None  # from npz row_ids / col_ids
    col_vocab: Vocab | None = None
    inferred_str: tuple[str, ...] = ()  # text id columns read as strings because a token was not an integer
    columns: str | None = None  # what was read from where, for the summary

    @classmethod
    def by_role(
        cls, source: str, column: Callable[[str], Any], labels: dict[str, str], locate: Location, **extra: Any
    ) -> Raw:
        """The Raw whose columns are ``column(role)`` for row, col, value, timestamp, is_test (in that order)."""
        return cls(
            source=source,
            rows=column("row"),
            cols=column("col"),
            values=column("value"),
            timestamps=column("timestamp"),
            is_test=column("is_test"),
            labels=labels,
            locate=locate,
            **extra,
        )


def fail(source: str, where: str | None, problem: str) -> IngestError:
    return IngestError(f"{source}: {where}: {problem}" if where else f"{source}: {problem}")


def index_locator(word: str, first: int = 0) -> Location:
    """Positions -> "row 5" (``first``: the source index of position 0, for a part of a file)."""
    return lambda positions: [f"{word} {first + int(p)}" for p in positions]


def first_index(mask: np.ndarray) -> int:
    return int(np.argmax(mask))


def is_str(c: IdColumn) -> bool:
    return isinstance(c, pa.ChunkedArray) or c.dtype.kind == "U"
