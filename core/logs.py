"""The log file and the facts a support person needs: versions, installation, model cards.

:func:`setup_logging` attaches a rotating log file in the user's data folder
(``<user data>/logs/openatp.log``, 2 MiB x 5 files) to the root logger, once per process,
and writes a start line with the OpenATP version and where it runs from. The CLI calls
it for every command and therefore for the GUI, which ``openatp`` opens. The log never
lives in the installation (see :mod:`core.paths`), so a read-only installation and an
uninstall do not matter. ``OPENATP_LOG=off`` turns the file off (kiosks, CI);
``OPENATP_LOG=debug`` logs more.

:func:`library_versions` reads package metadata only (no torch or Qt import), so the
``--version`` output, the About box and crash reports cost milliseconds.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

from core import __version__
from core.paths import install_dir, is_frozen, resource_dir, user_data_dir, user_subdir

LOG_NAME = "openatp.log"
LOG_MAX_BYTES = 2 * 1024 * 1024
LOG_BACKUPS = 5
ENV_LOG = "OPENATP_LOG"
_FORMAT = "%(asctime)s %(levelname)-7s %(process)d %(name)s: %(message)s"

# (label, distribution names to try, module to ask if the metadata is missing)
_LIBRARIES = (
    ("numpy", ("numpy",), "numpy"),
    ("scipy", ("scipy",), "scipy"),
    ("torch", ("torch",), "torch"),
    ("PySide6", ("PySide6", "PySide6_Essentials"), "PySide6"),
    ("VTK", ("vtk",), "vtkmodules"),
    ("pyvista", ("pyvista",), "pyvista"),
    ("pydicom", ("pydicom",), "pydicom"),
    ("qtawesome", ("QtAwesome", "qtawesome"), "qtawesome"),
)

_HANDLER_FLAG = "_openatp_handler"
log = logging.getLogger("openatp")


def library_versions() -> dict[str, str]:
    """Versions of OpenATP, Python and the bundled libraries, without importing them.

    Returns
    -------
    dict
        ``{"OpenATP": "0.1.0", "Python": "3.11.7", "numpy": ..., "torch": "2.13.0+cpu", ...}``;
        ``"not installed"`` for a library that is absent.
    """
    from importlib import metadata

    out = {"OpenATP": __version__, "Python": platform.python_version()}
    for label, dists, module in _LIBRARIES:
        version = None
        for dist in dists:
            try:
                version = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
        if version is None and module in sys.modules:  # a bundle without the dist-info
            version = getattr(sys.modules[module], "__version__", None)
        out[label] = str(version) if version else "not installed"
    return out


def versions_line(versions: dict[str, str] | None = None) -> str:
    """``Python 3.11.7, numpy 2.4.6, torch 2.13.0+cpu, ...`` (OpenATP itself left out)."""
    versions = library_versions() if versions is None else versions
    return ", ".join(f"{k} {v}" for k, v in versions.items() if k != "OpenATP")


@dataclass(frozen=True)
class ModelCard:
    """A bundled prediction model's card.

    Attributes
    ----------
    site : str
        The model folder's name (the site key, e.g. ``hn``).
    title : str
        The card's first heading.
    path : Path
        ``MODEL_CARD.md``.
    text : str
        The whole card (Markdown).
    """

    site: str
    title: str
    path: Path
    text: str


def model_cards(models_dir: str | Path | None = None) -> list[ModelCard]:
    """The cards of the bundled models (``resources/models/*/MODEL_CARD.md``), by site."""
    root = Path(models_dir) if models_dir is not None else resource_dir() / "models"
    cards = []
    for path in sorted(root.glob("*/MODEL_CARD.md")):
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            text = f"(card unreadable: {exc})"
        title = next((ln.lstrip("#").strip() for ln in text.splitlines() if ln.startswith("#")), path.parent.name)
        title = title.replace("`", "").replace("*", "")  # Markdown marks read badly in a plain line
        cards.append(ModelCard(path.parent.name, title, path, text))
    return cards


def environment_report() -> str:
    """Plain-text facts for a support person: versions, platform, installation, user data, models."""
    lines = [f"OpenATP {__version__}",
             f"libraries: {versions_line()}",
             f"platform: {platform.platform()} ({platform.machine()}), {os.cpu_count()} CPUs",
             f"installation: {install_dir()} ({'bundle' if is_frozen() else 'Python package'})",
             f"user data: {user_data_dir()}",
             f"executable: {sys.executable}"]
    lines += [f"model {c.site}: {c.title}" for c in model_cards()]
    return "\n".join(lines)


def log_file() -> Path | None:
    """The active log file, or None when file logging is off or was never set up."""
    for h in logging.getLogger().handlers:
        if getattr(h, _HANDLER_FLAG, False) and isinstance(h, logging.FileHandler):
            return Path(h.baseFilename)
    return None


def setup_logging(role: str = "cli", level: int | None = None) -> Path | None:
    """Attach the rotating log file to the root logger (once per process).

    Parameters
    ----------
    role : str
        Who starts (``cli`` plus the command, ``gui``); written on the start line.
    level : int, optional
        Log level of the file; default INFO (``OPENATP_LOG=debug``: DEBUG).

    Returns
    -------
    Path or None
        The log file, or None when ``OPENATP_LOG=off`` or the user data folder cannot be
        written (the program runs on without a log: a read-only home is not a reason to
        refuse planning).
    """
    mode = os.environ.get(ENV_LOG, "").strip().lower()
    if mode in ("off", "0", "no", "false"):
        return None
    if any(getattr(h, _HANDLER_FLAG, False) for h in logging.getLogger().handlers):
        log.info("%s started in the same process", role)
        return log_file()  # set up before (None: without a file, which was said then)
    level = level if level is not None else (logging.DEBUG if mode == "debug" else logging.INFO)
    root = logging.getLogger()
    # Keep warnings on stderr as before: without a handler on the root logger Python printed
    # them through its last-resort handler; with ours attached it would not any more. First,
    # so that a warning about the user data folder itself is printed in the same form.
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING)
    console.setFormatter(logging.Formatter("openatp: warning: %(message)s"))
    setattr(console, _HANDLER_FLAG, True)
    root.addHandler(console)
    try:
        path = user_subdir("logs") / LOG_NAME
        handler = logging.handlers.RotatingFileHandler(path, maxBytes=LOG_MAX_BYTES, backupCount=LOG_BACKUPS,
                                                       encoding="utf-8")
    except Exception as exc:  # noqa: BLE001 - no log must never stop the program
        # Said once on stderr: IT should learn the home folder is read-only.
        logging.getLogger("openatp").warning("no log file (%s)", exc)
        return None
    handler.setFormatter(logging.Formatter(_FORMAT))
    handler.setLevel(level)
    setattr(handler, _HANDLER_FLAG, True)
    root.addHandler(handler)
    if root.level > level or root.level == logging.NOTSET:
        root.setLevel(level)
    log.info("OpenATP %s started (%s), pid %d, %s, installation %s, user data %s", __version__, role,
             os.getpid(), "bundle" if is_frozen() else "Python package", install_dir(), user_data_dir())
    log.info("libraries: %s", versions_line())
    return Path(handler.baseFilename)


def teardown_logging() -> None:
    """Remove the handlers :func:`setup_logging` added (tests, repeated in-process runs)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, _HANDLER_FLAG, False):
            root.removeHandler(h)
            h.close()


__all__ = ["setup_logging", "teardown_logging", "log_file", "library_versions", "versions_line",
           "model_cards", "ModelCard", "environment_report", "LOG_NAME"]
