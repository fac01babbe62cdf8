"""Seeded train/test splits of an :class:`~alsx.data.matrix.Interactions` matrix.

Every split is a partition of the input entries: ``train``, ``test`` and (for
held-out rows) ``foldin`` are disjoint and their union is the input. All parts
keep the input's shape and vocabularies, so indices stay comparable.

Per-row choices are made without Python loops over rows: entries are put in a
random order, grouped by row with one stable sort, and each entry's rank inside
its row (position minus the row's offset) decides where it goes.

Kinds:
  * ``random_holdout``: a random fraction of each row is the ground truth (weak
    generalisation: every row is also trained on).
  * ``heldout_rows``: some rows are never trained on (strong generalisation);
    their entries are split into a fold-in history and a ground truth.
  * ``leave_last_out``: the last ``n`` entries of each row by timestamp.
  * ``given``: the ``is_test`` flags shipped with the data.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from alsx.data.matrix import Interactions


@dataclasses.dataclass(frozen=True)
class Split:
    """A partition of one interaction matrix into train, test and fold-in parts.

    Attributes:
      train: entries a model is fitted on. For ``kind == "heldout_rows"`` it holds
        no entry of the held-out rows at all.
      test: ground truth to rank against. For ``"heldout_rows"`` only held-out rows
        have entries here; for the other kinds, rows with ground truth are also
        trained on (their remaining entries are in ``train``).
      foldin: for ``"heldout_rows"``, the held-out rows' history: the entries to
        fold in (solve the row against the fixed column table) before ranking;
        excluded from the ranking like a trained row's history. None otherwise.
      heldout_rows: for ``"heldout_rows"``, int32 [n_heldout] sorted ids of the rows
        that are never trained; None otherwise.
      kind: ``"random_holdout"``, ``"heldout_rows"``, ``"leave_last_out"`` or ``"given"``.
      n_short_rows: rows with at least one entry that were too short to be split
        and were left entirely in ``train``.
    """

    train: Interactions
    test: Interactions
    foldin: Interactions | None = None
    heldout_rows: np.ndarray | None = None
    kind: str = "given"
    n_short_rows: int = 0

    def summary(self) -> dict[str, int | str]:
        """Counts of entries and rows per part.

        ``n_train + n_test + n_foldin == nnz``; ``n_test_rows`` counts rows with at
        least one ground-truth entry (the rows an evaluation will score).
        """
        n_rows, n_cols = self.train.shape
        n_foldin = 0 if self.foldin is None else self.foldin.nnz
        return {
            "kind": self.kind,
            "n_rows": int(n_rows),
            "n_cols": int(n_cols),
            "nnz": self.train.nnz + self.test.nnz + n_foldin,
            "n_train": self.train.nnz,
            "n_test": self.test.nnz,
            "n_foldin": n_foldin,
            "n_train_rows": int(np.unique(self.train.rows).size),
            "n_test_rows": int(np.unique(self.test.rows).size),
            "n_heldout_rows": 0 if self.heldout_rows is None else int(self.heldout_rows.size),
            "n_short_rows": int(self.n_short_rows),
        }


# ---------------------------------------------------------------------------
# Grouping helpers
# ---------------------------------------------------------------------------


def _row_offsets(rows: np.ndarray, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns (lengths int64 [n_rows], starts int64 [n_rows]) of rows in row-sorted order."""
    lengths = np.bincount(rows, minlength=n_rows).astype(np.int64)
    starts = np.zeros(n_rows, dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    return lengths, starts


def entry_keys(x: Interactions, seed: int) -> np.ndarray:
    """uint64 [nnz] pseudo-random key of each entry: splitmix64 of (seed, row, col).

    A function of the entry alone, not of its position, so a process holding some rows
    orders them exactly as one process holding all rows would (``alsx.data.partitioned``).
    """
    with np.errstate(over="ignore"):
        z = x.rows.astype(np.uint64) * np.uint64(x.shape[1]) + x.cols.astype(np.uint64)
        z += np.uint64(seed & 0xFFFFFFFF) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(0x632BE59BD9B4E019)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _shuffled_row_order(x: Interactions, seed: int) -> np.ndarray:
    """int64 [nnz] entry order: grouped by row, uniformly random inside each row (by entry_keys)."""
    return np.lexsort((entry_keys(x, seed), x.rows)).astype(np.int64)


def _rank_in_row(sorted_rows: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """int64 [nnz] 0-based position of each entry within its row, for row-grouped entries."""
    return np.arange(sorted_rows.size, dtype=np.int64) - starts[sorted_rows]


def _round_half_up(x: np.ndarray) -> np.ndarray:
    # np.round rounds half to even (0.5 -> 0, 2.5 -> 2); half-up is what people expect here.
    return np.floor(x + 0.5).astype(np.int64)


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(f"The '{name}' parameter must be in (0, 1). Got {value!r} instead.")


def _check_min_row_length(min_row_length: int) -> None:
    # A row of length 1 cannot give at least one entry to each side.
    if min_row_length < 2:
        raise ValueError(f"The 'min_row_length' parameter must be >= 2. Got {min_row_length!r} instead.")


def _per_row_counts(lengths: np.ndarray, fraction: float, min_row_length: int) -> np.ndarray:
    """int64 [n_rows] entries taken per row: round(fraction * len) clipped to [1, len - 1].

    Rows shorter than ``min_row_length`` get 0.
    """
    take = np.clip(_round_half_up(fraction * lengths), 1, np.maximum(lengths - 1, 1))
    return np.where(lengths >= min_row_length, take, 0)


def _partition(x: Interactions, test_mask: np.ndarray) -> tuple[Interactions, Interactions]:
    return x.select(~test_mask), x.select(test_mask)


# ---------------------------------------------------------------------------
# Public splits
# ---------------------------------------------------------------------------


def random_holdout(x: Interactions, fraction: float = 0.2, min_row_length: int = 2, seed: int = 0) -> Split:
    """Holds out a random ``fraction`` of every row's entries as ground truth.

    A row of length ``L >= min_row_length`` sends ``round(fraction * L)`` entries
    (half rounds up) to ``test``, but at least 1 and at most ``L - 1``, so every
    evaluated row keeps some training history. Shorter rows stay entirely in
    ``train`` and are counted in ``n_short_rows``.

    Args:
      x: the interactions, nnz entries.
      fraction: share of each row held out, in (0, 1).
      min_row_length: shortest row that is split (>= 2).
      seed: the result depends only on ``x`` and ``seed``.

    Returns:
      ``Split(kind="random_holdout")`` with ``foldin`` and ``heldout_rows`` None.
    """
    _check_fraction("fraction", fraction)
    _check_min_row_length(min_row_length)
    lengths, starts = _row_offsets(x.rows, x.shape[0])
    n_test = _per_row_counts(lengths, fraction, min_row_length)

    order = _shuffled_row_order(x, seed)
    sorted_rows = x.rows[order]
    # The first n_test[r] entries of row r in random order are the ground truth.
    test_mask = np.zeros(x.nnz, dtype=bool)
    test_mask[order] = _rank_in_row(sorted_rows, starts) < n_test[sorted_rows]

    train, test = _partition(x, test_mask)
    n_short = int(np.count_nonzero((lengths > 0) & (lengths < min_row_length)))
    return Split(train=train, test=test, kind="random_holdout", n_short_rows=n_short)


def heldout_rows_split(
    x: Interactions,
    row_fraction: float = 0.1,
    history_fraction: float = 0.8,
    min_row_length: int = 2,
    seed: int = 0,
    *,
    row_lengths: np.ndarray | None = None,
) -> Split:
    """Holds out whole rows for strong generalisation (rows never seen in training).

    ``round(row_fraction * n_eligible)`` rows (at least 1 when any row is eligible)
    are drawn uniformly from the rows with ``>= min_row_length`` entries. Each drawn
    row of length ``L`` is split at random into a history of
    ``round(history_fraction * L)`` entries (clipped to ``[1, L - 1]``) and a
    ground truth of the rest.

    Returns:
      ``Split(kind="heldout_rows")`` where
        * ``train``: every entry of the rows that are *not* held out (nothing of
          the held-out rows);
        * ``foldin``: the held-out rows' history, folded in at evaluation against
          the trained column table and excluded from their ranking;
        * ``test``: the held-out rows' ground truth;
        * ``heldout_rows``: int32 sorted ids of the held-out rows.
      ``n_short_rows`` counts non-empty rows too short to be eligible.

    ``row_lengths`` (int [n_rows]): the entries per row of the whole matrix when ``x`` holds
    only some complete rows (one process's part): rows are drawn from these, so every
    part agrees on the draw and each splits its rows as the whole matrix would be split.
    """
    _check_fraction("row_fraction", row_fraction)
    _check_fraction("history_fraction", history_fraction)
    _check_min_row_length(min_row_length)
    rng = np.random.default_rng(seed)
    n_rows = x.shape[0]
    lengths, starts = _row_offsets(x.rows, n_rows)
    everywhere = lengths if row_lengths is None else np.asarray(row_lengths, np.int64)
    if everywhere.shape != (n_rows,):
        raise ValueError(f"row_lengths must have shape ({n_rows},), got {everywhere.shape}")

    eligible = np.flatnonzero(everywhere >= min_row_length)
    n_held = min(max(int(_round_half_up(np.float64(row_fraction * eligible.size))), 1), eligible.size)
    held = np.sort(rng.choice(eligible, size=n_held, replace=False)).astype(np.int32)
    is_held = np.zeros(n_rows, dtype=bool)
    is_held[held] = True

    # History sizes are computed for every row but only used on held-out rows.
    n_hist = _per_row_counts(lengths, history_fraction, min_row_length)
    order = _shuffled_row_order(x, seed)
    sorted_rows = x.rows[order]
    in_hist = np.zeros(x.nnz, dtype=bool)
    in_hist[order] = _rank_in_row(sorted_rows, starts) < n_hist[sorted_rows]

    entry_held = is_held[x.rows]
    n_short = int(np.count_nonzero((everywhere > 0) & (everywhere < min_row_length)))
    return Split(
        train=x.select(~entry_held),
        test=x.select(entry_held & ~in_hist),
        foldin=x.select(entry_held & in_hist),
        heldout_rows=held,
        kind="heldout_rows",
        n_short_rows=n_short,
    )


def leave_last_out(x: Interactions, n: int = 1, seed: int = 0) -> Split:
    """Sends each row's ``n`` most recent entries (by timestamp) to ``test``.

    Entries with equal timestamps are ordered at random (fixed by ``seed``), so
    ties at the cut are broken reproducibly. Rows with ``<= n`` entries stay
    entirely in ``train`` and are counted in ``n_short_rows``.

    Raises:
      ValueError: if ``x.timestamps`` is None or ``n < 1``.
    """
    if x.timestamps is None:
        raise ValueError("leave_last_out needs timestamps; the interactions have none (x.timestamps is None).")
    if n < 1:
        raise ValueError(f"The 'n' parameter must be >= 1. Got {n!r} instead.")
    lengths, starts = _row_offsets(x.rows, x.shape[0])

    # By row, then timestamp; the seeded entry keys break timestamp ties.
    order = np.lexsort((entry_keys(x, seed), x.timestamps, x.rows))
    sorted_rows = x.rows[order]
    rank_from_end = lengths[sorted_rows] - 1 - _rank_in_row(sorted_rows, starts)
    test_mask = np.zeros(x.nnz, dtype=bool)
    test_mask[order] = (rank_from_end < n) & (lengths[sorted_rows] > n)

    train, test = _partition(x, test_mask)
    n_short = int(np.count_nonzero((lengths > 0) & (lengths <= n)))
    return Split(train=train, test=test, kind="leave_last_out", n_short_rows=n_short)


def given_split(x: Interactions) -> Split:
    """The split shipped with the data: ``x.is_test`` True entries are the ground truth.

    Raises:
      ValueError: if ``x.is_test`` is None.
    """
    if x.is_test is None:
        raise ValueError("given_split needs per-entry test flags; the interactions have none (x.is_test is None).")
    train, test = _partition(x, np.asarray(x.is_test, dtype=bool))
    return Split(train=train, test=test, kind="given")


SPLITS = ("none", "random", "heldout-rows", "last", "given")


def by_name(
    kind: str,
    x: Interactions,
    *,
    fraction: float = 0.2,
    row_fraction: float = 0.1,
    history_fraction: float = 0.8,
    seed: int = 0,
    row_lengths: np.ndarray | None = None,
) -> Split | None:
    """The split called ``kind`` (one of :data:`SPLITS`, as ``alsx train --split``); None for "none".

    ``row_lengths``: global entries per row when ``x`` holds one process's rows (heldout-rows
    draws from them; the other splits are row-local anyway).
    """
    if kind == "none":
        return None
    if kind == "random":
        return random_holdout(x, fraction=fraction, seed=seed)
    if kind == "heldout-rows":
        return heldout_rows_split(
            x, row_fraction=row_fraction, history_fraction=history_fraction, seed=seed, row_lengths=row_lengths
        )
    if kind == "last":
        return leave_last_out(x, seed=seed)
    if kind == "given":
        return given_split(x)
    raise ValueError(f"split must be one of {SPLITS}, got {kind!r}")
