"""The exception tree of wsi-seg.

Each error also inherits the standard type it refines, so callers can catch either.
Messages name the file, say what was found and what was expected, and hint at a fix;
the CLI prints them as one line.
"""

from __future__ import annotations


class WsiSegError(Exception):
    """Base class of every error wsi-seg raises on purpose."""


class Cancelled(Exception):
    """A run stopped because its caller cancelled it; what it finished is kept for a resume.

    Not a ``WsiSegError``: nothing is wrong with the input, and a cohort does not record
    a cancelled slide as failed.
    """


class SlideError(WsiSegError, OSError):
    """A slide cannot be opened, decoded or used."""


class MissingMppError(SlideError, ValueError):
    """The slide has no µm/px metadata and none was given."""


class NoTissueError(WsiSegError, ValueError):
    """Tissue detection found nothing to segment."""


class CheckpointError(WsiSegError, ValueError):
    """A model checkpoint is missing, corrupt or incompatible."""


class ConfigError(WsiSegError, ValueError):
    """A configuration value is invalid."""


class OutputError(WsiSegError, OSError):
    """The output path cannot be written, or already holds a result."""


class DatasetError(WsiSegError, ValueError):
    """A dataset folder or file does not match a supported layout."""


class ResultError(DatasetError):
    """A folder is not a (complete) wsi-seg result, or its content does not match the format."""
