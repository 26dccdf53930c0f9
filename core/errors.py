"""Typed errors whose messages a planner can act on.

Every error raised on bad input derives from :class:`OpenATPError`. The CLI catches
that one type, prints ``openatp: <path>: <message>`` on one line and exits 2; the GUI
shows the same text in a dialog. Anything else is a defect and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class OpenATPError(Exception):
    """Base class: a problem the planner can understand and fix.

    Parameters
    ----------
    message : str
        What is wrong, in a planner's words (no Python jargon).
    path : str or Path, optional
        The file or folder the problem is about; shown before the message.
    """

    def __init__(self, message: str, path: str | Path | None = None):
        super().__init__(message)
        self.message = message
        self.path = None if path is None else str(path)

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class InputError(OpenATPError):
    """Input the planner gave is invalid: a file, an argument, a goal, a value."""


class DicomError(InputError):
    """A DICOM file or series cannot be used as it is."""


class GeometryError(InputError):
    """Grids, structures or beams do not fit together (e.g. dose grid misses the body)."""


class ModelError(OpenATPError):
    """A prediction model is missing, corrupt, or of another architecture or site."""


class DoseEngineError(OpenATPError):
    """The dose calculation could not be done."""


class OptimizationError(OpenATPError):
    """The fluence optimization could not be done."""


class Cancelled(OpenATPError):
    """The planner cancelled a long task; ``result`` keeps the last good result, if any."""

    def __init__(self, message: str = "cancelled by the user", result=None):
        super().__init__(message)
        self.result = result
