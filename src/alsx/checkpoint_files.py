"""File-level integrity of checkpoint steps, and the words for a folder that holds none.

A step's files are listed with their sizes and CRC-32s in ``<step>/alsx_files.json`` right
after Orbax finalises the step.  :func:`verify` checks them before Orbax reads anything:
Orbax/TensorStore, handed a garbled file, fail with a clean exception but also leave stray
tracebacks on stderr ("Event loop is closed", "_GatheringFuture exception was never
retrieved"; 14 of 20 restores of a garbled step here), which a user must not see.  A step
without the list (saved by an older alsx, or killed between Orbax's commit and the list) is
still read, and still checked by the table checksums of ``alsx.checkpoint``.
"""

from __future__ import annotations

import json
import os
import zlib

DIGEST_NAME = "alsx_files.json"
_CHUNK = 1 << 22


def _crc32(path: str) -> int:
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            crc = zlib.crc32(block, crc)
    return crc


def _files(step_dir: str) -> list[str]:
    out = []
    for root, _, names in os.walk(step_dir):
        for n in names:
            rel = os.path.relpath(os.path.join(root, n), step_dir)
            if rel != DIGEST_NAME:
                out.append(rel)
    return sorted(out)


def write_digest(step_dir: str) -> None:
    """Lists the finished step's files with sizes and CRC-32s (atomically: temp file + rename)."""
    digest = {
        rel: [os.path.getsize(os.path.join(step_dir, rel)), _crc32(os.path.join(step_dir, rel))]
        for rel in _files(step_dir)
    }
    tmp = os.path.join(step_dir, DIGEST_NAME + ".tmp")
    with open(tmp, "w") as f:
        json.dump({"crc32": digest}, f)
    os.replace(tmp, os.path.join(step_dir, DIGEST_NAME))


def verify(step_dir: str) -> None:
    """Raises ValueError naming the first file that is missing, truncated or changed since
    :func:`write_digest`; does nothing for a step without a digest."""
    path = os.path.join(step_dir, DIGEST_NAME)
    if not os.path.exists(path):
        return
    try:
        with open(path) as f:
            digest = json.load(f)["crc32"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{DIGEST_NAME} is unreadable ({type(e).__name__})") from None
    for rel, (size, crc) in sorted(digest.items()):
        p = os.path.join(step_dir, rel)
        if not os.path.isfile(p):
            raise ValueError(f"file {rel} is missing")
        got = os.path.getsize(p)
        if got != size:
            raise ValueError(f"file {rel} has {got} bytes, {size} when saved")
        if _crc32(p) != crc:
            raise ValueError(f"file {rel} differs from the one saved (CRC-32)")


def set_aside_path(step_dir: str) -> str:
    """``<step>.corrupt``, or ``<step>.corrupt-2``, ... if taken: a name Orbax does not take for a step."""
    dst, n = step_dir + ".corrupt", 1
    while os.path.exists(dst):
        n += 1
        dst = f"{step_dir}.corrupt-{n}"
    return dst


def describe_folder(directory: str | os.PathLike) -> str:
    """What a folder without finished checkpoint steps holds, in a few words (for errors)."""
    names = sorted(os.listdir(directory))
    if not names:
        return "it is empty"
    unfinished = [n for n in names if ".orbax-checkpoint-tmp" in n]
    corrupt = [n for n in names if ".corrupt" in n]
    other = [n for n in names if n not in unfinished and n not in corrupt]
    parts = []
    if unfinished:
        parts.append(f"{len(unfinished)} unfinished save(s) of a killed run: {', '.join(unfinished[:3])}")
    if corrupt:
        parts.append(f"{len(corrupt)} step(s) set aside as unreadable: {', '.join(corrupt[:3])}")
    if other:
        parts.append(
            f"{len(other)} other entr{'y' if len(other) == 1 else 'ies'}: {', '.join(other[:5])}"
            + (", ..." if len(other) > 5 else "")
        )
    return "found " + "; ".join(parts)
