"""Text files as byte blocks: streaming (optionally compressed) text in blocks that end at a newline.

:func:`blocks` is the one place text bytes are read (``BLOCK_BYTES`` at a time; tests shrink
it to cut lines across reads); :func:`part_byte_range` cuts a file's entry lines into one
byte range per process; :func:`normalise_whitespace` turns an edge list block into the
single-space text pyarrow can split.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from alsx.data.raw import IngestError, fail

BLOCK_BYTES = 32 << 20  # text is parsed in blocks of about this many bytes
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".zst", ".lz4")


def open_stream(path: str) -> Any:
    try:
        return pa.input_stream(path, compression="detect")
    except (OSError, pa.ArrowInvalid) as e:
        raise fail(path, None, f"cannot open: {e}") from None


def damaged(path: str, e: Exception, text_bytes: int, line: int | None) -> IngestError:
    """A read that failed part-way (a truncated or corrupt compressed stream, an I/O error)."""
    gz = path.lower().endswith(COMPRESSION_SUFFIXES)
    at = f" after {text_bytes:,} bytes of text" if text_bytes else ""
    return fail(
        path,
        f"line {line}" if line is not None and text_bytes else None,
        (
            f"cannot read the {'compressed ' if gz else ''}data{at} ({e}): "
            + ("the file is truncated or damaged (check it with e.g. gzip -t)" if gz else "an I/O error")
        ),
    )


def blocks(path: str, start: int, block_bytes: int, end: int | None = None) -> Iterator[tuple[int, bytes]]:
    """(offset, bytes) blocks of the decompressed text from ``start`` to ``end`` (default: the end),
    each ending at a newline.  ``end`` must be a line start (see :func:`part_byte_range`)."""
    offset, carry, lines = start, b"", 0
    try:
        with open_stream(path) as f:
            if f.seekable():
                f.seek(start)
            else:
                todo = start
                while todo > 0:  # skip the header (compressed streams cannot seek)
                    got = len(f.read(min(todo, block_bytes)))
                    if not got:
                        return
                    todo -= got
            while True:
                want = block_bytes if end is None else min(block_bytes, end - offset - len(carry))
                chunk = f.read(want) if want > 0 else b""
                if not chunk:
                    if carry:
                        yield offset, carry
                    return
                buf = carry + chunk if carry else chunk
                cut = buf.rfind(b"\n") + 1
                if cut == 0:
                    carry = buf  # a line longer than a block: keep reading
                    continue
                yield offset, buf[:cut]
                lines += buf.count(b"\n", 0, cut)
                offset += cut
                carry = buf[cut:]
    except (OSError, pa.ArrowInvalid) as e:  # only the stream's own reads land here, never the consumer's
        raise damaged(path, e, offset + len(carry), lines + 1 if start == 0 else None) from None


def _next_line_start(path: str, pos: int) -> int:
    """The first line start at or after byte ``pos`` of an uncompressed file."""
    size = os.path.getsize(path)
    if pos <= 0:
        return 0
    with open(path, "rb") as f:
        f.seek(pos - 1)
        at = pos - 1
        while at < size:
            buf = f.read(1 << 16)
            i = buf.find(b"\n")
            if i >= 0:
                return at + i + 1
            at += len(buf)
    return size


def part_byte_range(path: str, data_start: int, part: int, n_parts: int) -> tuple[int, int]:
    """[start, end) bytes of part ``part`` of ``n_parts`` of an uncompressed text file's entry lines.

    The lines from ``data_start`` on are cut into ``n_parts`` byte ranges of equal size; a
    line belongs to the part holding its first byte, so the parts cover every line once.
    """
    size = os.path.getsize(path)
    cut = lambda k: data_start + (size - data_start) * k // n_parts  # noqa: E731
    start = data_start if part == 0 else max(_next_line_start(path, cut(part)), data_start)
    end = size if part == n_parts - 1 else max(_next_line_start(path, cut(part + 1)), start)
    return start, end


def count_newlines(path: str, end: int) -> int:
    """Newlines in the first ``end`` bytes (names the line of an error inside a part)."""
    n = 0
    for _, block in blocks(path, 0, BLOCK_BYTES, end):
        n += block.count(b"\n")
    return n


_WS_LUT = np.arange(256, dtype=np.uint8)
_WS_LUT[[9, 11, 12]] = 32  # tab, \v, \f -> space
_WS_LUT[13] = 10  # \r -> \n (an extra empty line for \r\n; empty lines are skipped)


def normalise_whitespace(block: bytes) -> np.ndarray:
    """Edge-list text -> single-space-separated lines without comments, as uint8 bytes.

    pyarrow splits on one delimiter character, so runs of blanks, leading blanks
    and ``#`` / ``%`` comment lines are removed here with whole-array NumPy
    operations (three compactions; no per-line Python).
    """
    a = _WS_LUT[np.frombuffer(block, dtype=np.uint8)]
    nl = a == 10
    sp = a == 32
    tok = ~(nl | sp)
    # 1) A blank survives only as the last of its run and only before a token.
    keep = ~sp
    keep[:-1] |= sp[:-1] & tok[1:]
    a = a[keep]
    # 2) That leaves at most one blank at a line start; drop it.
    lead = a == 32
    lead[1:] &= a[:-1] == 10
    a = a[~lead]
    # 3) Comment lines: the first byte of the line is '#' or '%'; drop through the newline.
    nl_pos = np.flatnonzero(a == 10)
    starts = np.concatenate(([0], nl_pos + 1))
    starts = starts[starts < len(a)]
    comment = starts[(a[starts] == 35) | (a[starts] == 37)]
    if len(comment):
        ends = np.searchsorted(nl_pos, comment)  # the newline closing each comment line
        stop = np.where(ends < len(nl_pos), nl_pos[np.minimum(ends, len(nl_pos) - 1)] + 1, len(a))
        delta = np.zeros(len(a) + 1, dtype=np.int8)
        delta[comment] += 1
        delta[stop] -= 1
        a = a[np.cumsum(delta[:-1], dtype=np.int8) == 0]
    return a
