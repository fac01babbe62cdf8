"""Where ``alsx recommend`` writes: JSON lines on stdout, or a long table (row, rank, id, score)
in Parquet or CSV, batch by batch."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from alsx.errors import UsageError


def external(vocab, idx: np.ndarray) -> list:
    """Original ids (Python int / str, for JSON) of dense indices."""
    return (idx if vocab is None else vocab.decode(idx)).tolist()


class JsonLines:
    def __init__(self, model):
        self.model = model

    def write(self, rows: np.ndarray, ids: np.ndarray, scores: np.ndarray) -> None:
        out = []
        for r, row_ids, row_scores in zip(external(self.model.row_vocab_, rows), ids, scores):
            keep = row_ids >= 0
            recs = [
                {"id": i, "score": round(float(s), 6)}
                for i, s in zip(external(self.model.col_vocab_, row_ids[keep]), row_scores[keep])
            ]
            out.append(json.dumps({"row": r, "recommendations": recs}))
        sys.stdout.write("\n".join(out) + "\n")

    def close(self, ok: bool) -> None:
        sys.stdout.flush()


class Table:
    """A long table (row, rank, id, score) written batch by batch to Parquet or CSV."""

    def __init__(self, path: str, model):
        import pyarrow as pa

        suffix = Path(path).suffix.lower()
        if suffix not in (".parquet", ".pq", ".csv"):
            raise UsageError(
                f"--out {path}: the name must end in .parquet or .csv (or leave --out out for JSON lines on stdout)"
            )

        def kind(vocab):
            return pa.string() if vocab is not None and vocab.kind == "str" else pa.int64()

        self.schema = pa.schema(
            [
                ("row", kind(model.row_vocab_)),
                ("rank", pa.int32()),
                ("id", kind(model.col_vocab_)),
                ("score", pa.float32()),
            ]
        )
        self.path, self.model, self.csv, self.writer = Path(path), model, suffix == ".csv", None

    def write(self, rows: np.ndarray, ids: np.ndarray, scores: np.ndarray) -> None:
        import pyarrow as pa

        keep = ids >= 0  # [b, k]
        rank = np.broadcast_to(np.arange(1, ids.shape[1] + 1, dtype=np.int32), ids.shape)[keep]
        row_idx = np.broadcast_to(rows[:, None], ids.shape)[keep]

        def ext(vocab, index):
            return index.astype(np.int64) if vocab is None else vocab.decode(index)

        batch = pa.record_batch(
            [
                pa.array(ext(self.model.row_vocab_, row_idx), self.schema.field("row").type),
                pa.array(rank),
                pa.array(ext(self.model.col_vocab_, ids[keep]), self.schema.field("id").type),
                pa.array(scores[keep].astype(np.float32)),
            ],
            schema=self.schema,
        )
        if self.writer is None:
            if self.csv:
                import pyarrow.csv as pcsv

                self.writer = pcsv.CSVWriter(self.path, self.schema)
            else:
                import pyarrow.parquet as pq

                self.writer = pq.ParquetWriter(self.path, self.schema)
        self.writer.write_batch(batch)

    def close(self, ok: bool) -> None:
        if self.writer is not None:
            self.writer.close()
        if not ok:  # never leave half a table that looks whole
            self.path.unlink(missing_ok=True)
        elif self.writer is None:  # no rows: still a valid, empty table
            self.write(np.zeros(0, np.int64), np.zeros((0, 1), np.int32), np.zeros((0, 1), np.float32))
            self.writer.close()


# ---------------------------------------------------------------------------- scorers
