"""Where OpenATP's files live: the installation (read-only) and the user's data folder.

One place answers "where does this go?" so that an installer can replace or remove the
installation without touching what planners made, and a read-only installation never
matters:

- :func:`install_dir` -- the application as installed: ``/opt/openatp`` for the packaged
  bundle, the ``site-packages`` folder for a wheel install, the checkout for a developer.
  Treated as read-only; an upgrade replaces it, an uninstall removes it.
- :func:`resource_dir` -- the bundled resources (models, protocols, beams, demo patient,
  icons) inside the installation.
- :func:`user_data_dir` -- institution templates, projects, review studies, logs, crash
  reports and autosaves: ``$OPENATP_USER_DIR`` if set, else the platform's per-user data
  folder (``$XDG_DATA_HOME/OpenATP``, default ``~/.local/share/OpenATP``, on Linux;
  ``%APPDATA%\\OpenATP`` on Windows; ``~/Library/Application Support/OpenATP`` on macOS).
  It survives upgrades and uninstalls, and it is never inside the installation: a path
  that would be falls back to ``~/OpenATP`` with a warning.

Nothing here creates folders unless asked (``create=True`` / :func:`user_subdir`), and
nothing imports Qt, torch or pydicom.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from core.errors import InputError

APP_NAME = "OpenATP"
ENV_USER_DIR = "OPENATP_USER_DIR"

#: The kinds of user data and their sub-folders of :func:`user_data_dir`.
USER_SUBDIRS: dict[str, str] = {
    "protocols": "protocols",  # institution templates (core.goals.templates)
    "projects": "projects",
    "reviews": "reviews",
    "logs": "logs",
    "crash": "crash-reports",
    "autosave": "autosave",
}

_PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # folder holding core/, app/, widgets/, resources/
_PACKAGES = ("core", "app", "widgets", "resources")

log = logging.getLogger("openatp.paths")
_warned: set[str] = set()  # each refused folder is reported once per process, not on every call


def is_frozen() -> bool:
    """True inside a PyInstaller (or similar) bundle, where ``sys.executable`` is OpenATP itself."""
    return bool(getattr(sys, "frozen", False))


def install_dir() -> Path:
    """The installed application's top folder.

    Returns
    -------
    Path
        The bundle folder holding the ``openatp`` executable when frozen (e.g. ``/opt/openatp``);
        otherwise the folder holding the ``core`` package (``site-packages`` or a checkout).
    """
    if is_frozen():
        return Path(sys.executable).resolve().parent
    return _PACKAGE_ROOT


def resource_dir() -> Path:
    """The bundled ``resources`` folder (models, protocols, beams, demo patient, icons)."""
    return _PACKAGE_ROOT / "resources"


def _is_source_checkout(root: Path) -> bool:
    return (root / "pyproject.toml").is_file() and (root / "core").is_dir()


def protected_dirs() -> list[Path]:
    """Folders user data must never be inside.

    The whole installation for a bundle or a ``site-packages`` install (both are replaced
    by an upgrade). In a developer's checkout only the package folders themselves, so that
    a developer may keep user data in, say, ``out/``.
    """
    root = install_dir()
    if not is_frozen() and _is_source_checkout(root):
        return [root / p for p in _PACKAGES]
    return [root]


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def _resolved(path: Path) -> Path:
    # resolve() follows symlinks even for paths that do not exist yet (strict=False), so a
    # link pointing into the installation is caught as well.
    return path.expanduser().resolve()


def is_inside_install(path: str | Path) -> bool:
    """Whether ``path`` lies in (or is) a folder of the installation (:func:`protected_dirs`)."""
    p = _resolved(Path(path))
    return any(_inside(p, _resolved(d)) for d in protected_dirs())


def platform_user_dir(platform: str | None = None, env: Mapping[str, str] | None = None,
                      home: str | Path | None = None) -> Path:
    """The platform's per-user data folder for OpenATP, ignoring ``$OPENATP_USER_DIR``.

    Parameters
    ----------
    platform : str, optional
        A ``sys.platform`` value; default the running one (for tests of other platforms).
    env : mapping, optional
        Environment variables; default ``os.environ``.
    home : str or Path, optional
        The home folder; default ``Path.home()``.

    Returns
    -------
    Path
        ``$XDG_DATA_HOME/OpenATP`` (default ``~/.local/share/OpenATP``) on Linux and other
        Unix systems, ``%APPDATA%\\OpenATP`` (default ``~/AppData/Roaming/OpenATP``) on
        Windows, ``~/Library/Application Support/OpenATP`` on macOS.
    """
    platform = sys.platform if platform is None else platform
    env = os.environ if env is None else env
    home_dir = Path.home() if home is None else Path(home)
    if platform.startswith("win"):
        appdata = env.get("APPDATA")
        return (Path(appdata) if appdata else home_dir / "AppData" / "Roaming") / APP_NAME
    if platform == "darwin":
        return home_dir / "Library" / "Application Support" / APP_NAME
    xdg = env.get("XDG_DATA_HOME")
    # The XDG spec says a relative XDG_DATA_HOME is invalid and must be ignored.
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else home_dir / ".local" / "share"
    return base / APP_NAME


def _fallback_dir(home: Path) -> Path:
    candidate = home / APP_NAME
    if not is_inside_install(candidate):
        return candidate
    # A home folder inside the installation (a kiosk account set up oddly): the temp folder
    # at least keeps the installation clean; logs say so.
    user = os.environ.get("USER") or os.environ.get("USERNAME") or "user"
    return Path(tempfile.gettempdir()) / f"{APP_NAME}-{user}"


def user_data_dir(create: bool = False) -> Path:
    """The per-user OpenATP data folder (see the module docstring for the rules).

    Parameters
    ----------
    create : bool
        Create the folder (and parents) if missing.

    Returns
    -------
    Path
        An absolute path, never inside :func:`protected_dirs`.

    Raises
    ------
    InputError
        ``create=True`` and the folder cannot be created (permissions, a file in the way).
    """
    env = os.environ.get(ENV_USER_DIR, "").strip()
    chosen = Path(env).expanduser() if env else platform_user_dir()
    source = f"${ENV_USER_DIR}" if env else "the platform's user data folder"
    chosen = chosen if chosen.is_absolute() else Path.cwd() / chosen
    if is_inside_install(chosen):
        fallback = _fallback_dir(Path.home())
        if str(chosen) not in _warned:
            _warned.add(str(chosen))
            log.warning("user data folder %s (from %s) lies inside the OpenATP installation %s, which an "
                        "upgrade or uninstall replaces; using %s instead", chosen, source, install_dir(), fallback)
        chosen = fallback
    if create:
        try:
            chosen.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create the OpenATP user data folder ({exc.strerror or exc}); "
                             f"set {ENV_USER_DIR} to a writable folder", path=chosen) from None
    return chosen


def user_subdir(kind: str, create: bool = True) -> Path:
    """A sub-folder of :func:`user_data_dir` for one kind of user data.

    Parameters
    ----------
    kind : str
        One of :data:`USER_SUBDIRS` (``protocols``, ``projects``, ``reviews``, ``logs``,
        ``crash``, ``autosave``).
    create : bool
        Create it if missing (default).
    """
    try:
        name = USER_SUBDIRS[kind]
    except KeyError:
        raise InputError(f"unknown kind of user data '{kind}'; one of {', '.join(USER_SUBDIRS)}") from None
    path = user_data_dir() / name
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create the OpenATP {kind} folder ({exc.strerror or exc}); "
                             f"set {ENV_USER_DIR} to a writable folder", path=path) from None
    return path


__all__ = ["APP_NAME", "ENV_USER_DIR", "USER_SUBDIRS", "install_dir", "resource_dir", "protected_dirs",
           "is_inside_install", "platform_user_dir", "user_data_dir", "user_subdir", "is_frozen"]
