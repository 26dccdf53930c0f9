"""`openatp dose` (docs/cli.md): one JSON document, a DOSE file, exit 2 with one line on bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO, TG119


def _run(*args):
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600)


def test_dose_tg119_open_fields(tmp_path, tg119_dir):
    out = tmp_path / "d.npz"
    p = _run("dose", "phantom:tg119", "--phantom-file", str(TG119 / "tg119.npz"), "--beams", "gantry=0;gantry=90",
             "--fluence", "open", "--out", str(out), "--dose-grid", "6", "--device", "cpu", "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert {"timings_s", "device"} <= set(doc) and doc["device"] == "cpu"
    d = np.load(out)
    assert d["dose_gy"].dtype == np.float32 and d["dose_gy"].shape == (129, 167, 167)
    assert np.allclose(d["spacing_mm"], (2.5, 3.0, 3.0))
    # two open fields of 100 MU each, shaped to the target: ~1-2 Gy in the target region
    assert 0.5 < float(d["dose_gy"].max()) < 3.0


@pytest.mark.parametrize("beams, words", [
    ("nosuch", "unknown beam template"),
    ("gantry=0,field=10by10", "WIDTHxHEIGHT"),
    ("gantry=361", "0-360"),
    ("gantry=0,field=500x500", "larger than the collimator"),
    ("gantry=0,iso=0/900/0", "outside the body"),
])
def test_dose_bad_input_exit_2(tmp_path, beams, words):
    p = _run("dose", "phantom:tg119", "--phantom-file", str(TG119 / "tg119.npz"), "--beams", beams,
             "--out", str(tmp_path / "x.npz"), "--device", "cpu")
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in p.stderr
    assert not (tmp_path / "x.npz").exists()
