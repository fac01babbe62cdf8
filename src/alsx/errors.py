"""The errors alsx reports to its users, each with the exit code the CLI returns for it.

Every layer raises these (never a bare ValueError for a user's mistake), with messages in
the user's words: the file, the line or row, the value, and the CLI flag to change.  The
CLI prints ``alsx: error: <message>`` on one line and exits with ``exit_code``; ``--debug``
(or ``ALSX_DEBUG=1``) adds the traceback.

    2  UsageError     a flag value or a combination of flags is wrong (argparse's code too)
    3  DataError      the input data cannot be read or is malformed
    4  ModelError     a model folder (``alsx train --out``) is missing or damaged
    5  TrainingError  training itself failed (non-finite tables, a hung peer)
    1  anything else  a bug: the message says so and asks for ``--debug``
"""

from __future__ import annotations


class AlsxError(Exception):
    """Base of the errors alsx reports in one line."""

    exit_code = 1


class UsageError(AlsxError, ValueError):
    """A flag (or library argument) has a value that cannot work, found before any work."""

    exit_code = 2


class DataError(AlsxError, ValueError):
    """Bad input data; the message names the source, the line or row, and the value."""

    exit_code = 3


class ModelError(AlsxError):
    """A saved model folder cannot be used: a file is missing, empty, garbled or inconsistent."""

    exit_code = 4


class TrainingError(AlsxError, RuntimeError):
    """Training stopped: non-finite tables, a failed peer, a checkpoint that cannot continue."""

    exit_code = 5


class DivergenceError(TrainingError, FloatingPointError):
    """Training produced non-finite tables (still a FloatingPointError, as it was before)."""
