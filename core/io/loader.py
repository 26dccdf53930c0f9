"""One entry point from a PATIENT argument (docs/cli.md) to a :class:`~core.patient.Patient`.

``spec`` is one of

* ``phantom:<key>`` -- a registered phantom (:data:`core.io.phantoms.PHANTOMS`):
  ``phantom:water``, or ``phantom:tg119`` with ``phantom_file`` (default, as a
  convenience: ``../shared/data/tg119/tg119.npz`` beside the repository);
* a ``.npz`` file -- an OpenKBP case (:func:`core.io.openkbp.load_openkbp`);
* a folder -- DICOM (CT + RTSTRUCT, optional RTDOSE/RTPLAN; or RTSTRUCT + RTDOSE for
  dose review), read by :func:`core.io.dicom_import.load_dicom_folder`.
"""

from __future__ import annotations

from pathlib import Path

from core.errors import InputError
from core.patient import Patient

PHANTOM_PREFIX = "phantom:"

#: Where ``phantom:tg119`` looks when no file is given: the shared data beside the checkout.
DEFAULT_TG119_FILE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "tg119" / "tg119.npz"


def load_phantom(key: str, phantom_file: str | Path | None = None) -> Patient:
    """Build the registered phantom ``key`` (``water``, ``tg119``)."""
    from core.io.phantoms import PHANTOMS

    key = key.strip().lower()
    if key not in PHANTOMS:
        raise InputError(f"unknown phantom '{key}' (known: {', '.join(sorted(PHANTOMS))})",
                         f"{PHANTOM_PREFIX}{key}")
    build, needs_file = PHANTOMS[key]
    path = None
    if needs_file:
        path = Path(phantom_file) if phantom_file else DEFAULT_TG119_FILE
        if not path.exists():
            hint = "" if phantom_file else " (give the phantom file with --phantom-file)"
            raise InputError(f"phantom file not found{hint}", path)
    return build(path)


def load_patient(spec: str | Path, phantom_file: str | Path | None = None, progress=None,
                 cancel=None) -> Patient:
    """Load a patient from a PATIENT argument.

    Parameters
    ----------
    spec : str or Path
        ``phantom:<key>``, an OpenKBP ``.npz`` case, or a DICOM folder (see module docstring).
    phantom_file : str or Path, optional
        The file a phantom is read from (``phantom:tg119``).
    progress, cancel : optional
        :class:`core.progress.Progress` and :class:`core.progress.CancelToken`.

    Raises
    ------
    InputError
        Missing path, unknown phantom, unreadable or malformed file; the message names it.
    """
    from core.progress import check_cancel

    check_cancel(cancel)
    text = str(spec)
    if text.lower().startswith(PHANTOM_PREFIX):
        return load_phantom(text[len(PHANTOM_PREFIX):], phantom_file)
    path = Path(text).expanduser()
    if not path.exists():
        raise InputError("no such file or folder", path)
    if path.is_dir():
        try:
            from core.io.dicom_import import load_dicom_folder
        except ModuleNotFoundError as exc:
            if exc.name == "core.io.dicom_import":
                raise InputError("DICOM import is not available in this build", path) from None
            raise
        return load_dicom_folder(path, progress=progress, cancel=cancel)
    if path.suffix.lower() == ".npz":
        from core.io.openkbp import load_openkbp

        return load_openkbp(path, progress=progress, cancel=cancel)
    raise InputError("not a patient: expected an OpenKBP .npz case, a DICOM folder or phantom:NAME", path)
