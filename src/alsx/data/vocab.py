"""External ids <-> dense indices ``0..n-1``.

A :class:`Vocab` holds the external id of every dense index, either as int64 or
as a NumPy unicode array (``<U..``); it never holds Python objects, so it saves
to ``.npz`` without pickle. Building one is a single vectorised
``np.unique(..., return_inverse=True)`` (O(n log n)), not a dict over entries.
"""

from __future__ import annotations

import os
from typing import Literal

import numpy as np
import pyarrow as pa

__all__ = ["Vocab"]

_INT32_MAX = np.iinfo(np.int32).max


def as_id_array(ids: object, *, what: str = "ids") -> np.ndarray:
    """Normalises external ids to a 1-D int64 or ``<U`` array.

    Integers of any width become int64 (uint64 beyond int64 is an error),
    integral floats become int64, bytes are decoded as UTF-8, and object arrays
    must hold only str or only int. Bool and fractional floats are rejected:
    they are almost always a column picked by mistake.

    Raises:
      ValueError: for any other dtype, naming ``what`` and the first bad value.
    """
    arr = np.asarray(ids)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional, got shape {arr.shape}")
    kind = arr.dtype.kind
    if kind == "i":
        return arr.astype(np.int64, copy=False)
    if kind == "u":
        if arr.size and arr.dtype.itemsize >= 8 and arr.max() > np.iinfo(np.int64).max:
            bad = arr[arr > np.iinfo(np.int64).max][0]
            raise ValueError(f"{what}: id {bad} does not fit in int64")
        return arr.astype(np.int64)
    if kind == "U":
        return arr
    if kind == "S":
        return np.char.decode(arr, "utf-8")
    if kind == "f":
        finite = np.isfinite(arr)
        frac = ~finite | (arr != np.floor(np.where(finite, arr, 0)))
        if frac.any():
            i = int(np.flatnonzero(frac)[0])
            raise ValueError(f"{what}: non-integer id {arr[i]!r} at position {i} (ids must be int or str)")
        return arr.astype(np.int64)
    if kind == "b":
        raise ValueError(f"{what}: bool ids are not supported (dtype {arr.dtype}); pass int or str ids")
    if kind == "O":
        # Let pyarrow infer the element type in C instead of looping over objects in Python.
        try:
            typed = pa.array(arr, from_pandas=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise ValueError(f"{what}: mixed or unsupported id types in object array ({e})") from None
        if typed.null_count:
            i = int(np.flatnonzero(typed.is_null().to_numpy(zero_copy_only=False))[0])
            raise ValueError(f"{what}: missing id (None) at position {i}")
        if pa.types.is_integer(typed.type):
            return typed.to_numpy().astype(np.int64, copy=False)
        if pa.types.is_string(typed.type) or pa.types.is_large_string(typed.type):
            return typed.to_numpy(zero_copy_only=False).astype(str)
        raise ValueError(f"{what}: unsupported id type {typed.type} in object array")
    raise ValueError(f"{what}: unsupported id dtype {arr.dtype} (pass int or str ids)")


class Vocab:
    """A bijection between external ids and dense indices ``0..len-1``.

    Attributes:
      ids: read-only [n] int64 or ``<U`` array; ``ids[i]`` is the external id of index i.

    Construct with :meth:`from_ids` (from raw, repeated ids; the vocabulary is
    sorted) or ``Vocab(ids)`` (an explicit, duplicate-free id list in index order).
    """

    __slots__ = ("_ids", "_sorter", "_sorted")

    def __init__(self, ids: object) -> None:
        arr = np.array(as_id_array(ids), copy=True)  # own copy: later edits by the caller cannot leak in
        if len(arr) > _INT32_MAX:
            raise ValueError(f"a vocabulary holds at most {_INT32_MAX} ids, got {len(arr)}")
        sorter = None
        if len(arr) > 1 and not np.all(arr[1:] > arr[:-1]):
            sorter = np.argsort(arr, kind="stable")
            s = arr[sorter]
            dup = s[1:] == s[:-1]
            if dup.any():
                examples = np.unique(s[1:][dup])[:5].tolist()
                raise ValueError(f"vocabulary ids must be unique; {int(dup.sum())} repeats, e.g. {examples}")
        self._set(arr, sorter)

    def _set(self, arr: np.ndarray, sorter: np.ndarray | None) -> None:
        arr.flags.writeable = False
        self._ids = arr
        self._sorter = sorter  # None when ids are sorted (always so after from_ids)
        self._sorted = arr if sorter is None else arr[sorter]

    @classmethod
    def from_sorted_unique(cls, arr: np.ndarray) -> Vocab:
        """Wraps strictly increasing ids without copying or re-checking them."""
        v = cls.__new__(cls)
        v._set(arr, None)
        return v

    @classmethod
    def from_ids(cls, raw: object) -> tuple[Vocab, np.ndarray]:
        """Builds the vocabulary of the distinct values in ``raw`` and encodes it.

        Args:
          raw: [n] int or str ids, repeats allowed.

        Returns:
          (vocab, codes): vocab sorted by id; codes int32 [n] with ``vocab.ids[codes] == raw``.
        """
        arr = as_id_array(raw)
        if len(arr) == 0:
            return cls.from_sorted_unique(arr.copy()), np.zeros(0, np.int32)
        uniq, inverse = np.unique(arr, return_inverse=True)
        if len(uniq) > _INT32_MAX:
            raise ValueError(f"a vocabulary holds at most {_INT32_MAX} ids, got {len(uniq)}")
        return cls.from_sorted_unique(uniq), inverse.reshape(-1).astype(np.int32, copy=False)

    @property
    def ids(self) -> np.ndarray:
        return self._ids

    @property
    def kind(self) -> Literal["int", "str"]:
        return "str" if self._ids.dtype.kind == "U" else "int"

    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        head = self._ids[:3].tolist()
        return f"Vocab({len(self)} {self.kind} ids, first {head})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vocab):
            return NotImplemented
        return self.kind == other.kind and np.array_equal(self._ids, other._ids)

    __hash__ = None  # type: ignore[assignment]  # mutable-looking container; equality is by value

    def _query(self, ids: object) -> np.ndarray:
        q = as_id_array(ids, what="query ids")
        if len(q) and (q.dtype.kind == "U") != (self.kind == "str"):
            raise ValueError(f"this vocabulary holds {self.kind} ids; got {q.dtype} ids")
        return q

    def encode(self, ids: object, *, missing: Literal["raise"] | int = "raise") -> np.ndarray:
        """Dense indices of external ids.

        Args:
          ids: [m] external ids of the vocabulary's kind.
          missing: "raise" (default) or an int written for unknown ids (e.g. -1).

        Returns:
          int32 [m].

        Raises:
          ValueError: listing up to 5 unknown ids, when ``missing="raise"``.
        """
        q = self._query(ids)
        n = len(self._sorted)
        if n == 0:
            found = np.zeros(len(q), dtype=bool)
            out = np.zeros(len(q), dtype=np.int32)
        else:
            pos = np.minimum(np.searchsorted(self._sorted, q), n - 1)
            found = self._sorted[pos] == q
            out = (pos if self._sorter is None else self._sorter[pos]).astype(np.int32)
        if not found.all():
            if missing == "raise":
                unknown = q[~found]
                examples = ", ".join(repr(x) for x in unknown[:5].tolist())
                raise ValueError(
                    f"{len(unknown)} unknown id(s) out of {len(q)}: {examples}" + (", ..." if len(unknown) > 5 else "")
                )
            out[~found] = missing
        return out

    def decode(self, indices: object) -> np.ndarray:
        """External ids [m] of dense indices [m] (int64 or ``<U``)."""
        idx = np.asarray(indices)
        if idx.dtype.kind not in "iu":
            raise ValueError(f"indices must be integers, got dtype {idx.dtype}")
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            bad = idx[(idx < 0) | (idx >= len(self))].reshape(-1)[0]
            raise ValueError(f"index {bad} outside vocabulary of size {len(self)}")
        return self._ids[idx]

    def save(self, path: str | os.PathLike) -> None:
        """Writes ``ids`` to an ``.npz`` at exactly ``path`` (no pickle; str ids as ``<U``)."""
        with open(path, "wb") as f:
            np.savez(f, ids=self._ids)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocab:
        """Reads a vocabulary written by :meth:`save` (``allow_pickle=False``)."""
        with np.load(path, allow_pickle=False) as z:
            if "ids" not in z.files:
                raise ValueError(f"{os.fspath(path)}: not a vocabulary file (keys {z.files})")
            ids = z["ids"]
        if ids.dtype.kind not in "iU":
            raise ValueError(f"{os.fspath(path)}: vocabulary ids have dtype {ids.dtype}, expected int64 or <U")
        return cls(ids)
