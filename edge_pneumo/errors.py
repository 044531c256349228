"""Errors the user can act on.

Every failure we can explain is an `EdgePneumoError`: the CLI prints its message on one
line and exits with its `exit_code`, no traceback (set EDGE_PNEUMO_DEBUG=1 to see one).
"""

from __future__ import annotations

# Exit codes shared by every command.
EXIT_OK = 0
EXIT_PARTIAL = 1  # a batch ran, but some inputs failed
EXIT_USAGE = 2  # Typer/Click's own code for bad options
EXIT_FAILED = 3  # nothing could run (bad model, bad data folder, no usable input)
EXIT_VALIDATION = 4  # an exported artifact missed its budget


class EdgePneumoError(Exception):
    """A failure with a message meant for the user."""

    exit_code = EXIT_FAILED


class InputImageError(EdgePneumoError):
    """One input image cannot be used (missing, not an image, corrupt, too small...)."""


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
