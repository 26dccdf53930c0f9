"""The core must import with the GUI stack blocked (docs/architecture.md)."""

import subprocess
import sys

from tests.conftest import REPO

BLOCKED = ["PySide6", "shiboken6", "vtk", "pyvista", "pyvistaqt", "qtawesome"]

SCRIPT = f"""
import sys, importlib, pkgutil
for name in {BLOCKED!r}:
    sys.modules[name] = None  # any import of it raises ImportError
import core
mods = []
for info in pkgutil.walk_packages(core.__path__, 'core.'):
    importlib.import_module(info.name)
    mods.append(info.name)
print(len(mods))
"""


def test_core_imports_without_gui_stack():
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) >= 5


def test_import_core_is_cheap():
    """`import core` and the CLI entry must not pull torch or pydicom (start-up time)."""
    code = "import sys, core, core.geometry, core.patient, app.cli; app.cli.build_parser(); " \
           "print(sorted(m for m in ('torch','pydicom','PySide6') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
