"""Errors the user can act on.

Every failure we can explain is an `EdgePneumoError`: the CLI prints its message on one
line and exits with its `exit_code`, no traceback (set EDGE_PNEUMO_DEBUG=1 to see one).
"""

from __future__ import annotations

import os
import sys

# Exit codes shared by every command.
EXIT_OK = 0
EXIT_PARTIAL = 1  # a batch ran, but some inputs failed
EXIT_USAGE = 2  # Typer/Click's own code for bad options
EXIT_FAILED = 3  # nothing could run (bad model, bad data folder, no usable input)
EXIT_VALIDATION = 4  # an exported artifact missed its budget
EXIT_PIPE_CLOSED = 141  # the reader of stdout went away (`| head`): 128 + SIGPIPE, as for cat


class EdgePneumoError(Exception):
    """A failure with a message meant for the user."""

    exit_code = EXIT_FAILED


class InputImageError(EdgePneumoError):
    """One input image cannot be used (missing, not an image, corrupt, too small...)."""


class InputRejected(EdgePneumoError):
    """The guard refused an input: readable, but not what the model reads (not a frontal chest X-ray).

    Not a failure: the result says `status: rejected` with this reason, and a batch goes on.
    """

    def __init__(self, reason: str, check: str = "", details: dict | None = None):
        super().__init__(reason)
        self.reason = reason
        self.check = check
        self.details = details or {}


class DatasetError(EdgePneumoError):
    """The data folder does not have the expected layout or content."""


class ModelFileError(EdgePneumoError):
    """A model file or exported folder cannot be used."""


class IntegrityError(ModelFileError):
    """An artifact's sha256 does not match the manifest: it was changed after export."""


class MissingRuntimeError(EdgePneumoError):
    """An optional dependency (an extra) is needed and not installed."""


class ValidationError(EdgePneumoError):
    """An exported artifact does not behave like the float model within its budget."""

    exit_code = EXIT_VALIDATION


def report(e: BaseException) -> int:
    """A known failure (or Ctrl-C) -> one line on stderr; returns the exit code to use.

    Shared by the Typer commands and the fast `infer` entry, so both fail the same way.
    With EDGE_PNEUMO_DEBUG=1 the exception is re-raised to show its traceback.
    """
    if isinstance(e, KeyboardInterrupt):
        print("interrupted", file=sys.stderr, flush=True)
        return 130
    if not isinstance(e, EdgePneumoError) or os.environ.get("EDGE_PNEUMO_DEBUG"):
        raise e
    print(f"error: {e}", file=sys.stderr, flush=True)
    return e.exit_code
