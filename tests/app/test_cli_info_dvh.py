"""`openatp info` and `openatp dvh` against plain numpy on real OpenKBP cases; bad input -> exit 2."""

import json
import subprocess
import sys

import numpy as np
import pytest

from app.cli import main
from tests.conftest import REPO

CASES = ["pt_201", "pt_203", "pt_207"]
ENDPOINTS = ("volume_cc", "mean", "max", "min", "D0.03cc", "D0.1cc", "D1", "D2", "D5", "D50", "D95", "D98", "D99")


def run_json(capsys, argv):
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 0, err
    return json.loads(out)


def reference_endpoints(values, voxel_cc):
    """Straight numpy, OpenKBP's formulas (Babier et al. 2021)."""
    def d_cc(v):
        n_v = max(1, int(np.round(v / voxel_cc)))
        return values.max() if n_v > values.size else np.percentile(values, 100 - 100 * n_v / values.size)
    out = {"volume_cc": values.size * voxel_cc, "mean": values.mean(), "max": values.max(), "min": values.min(),
           "D0.03cc": d_cc(0.03), "D0.1cc": d_cc(0.1)}
    out.update({f"D{x}": np.percentile(values, 100 - x) for x in (1, 2, 5, 50, 95, 98, 99)})
    return out


@pytest.mark.parametrize("case", CASES)
def test_info_and_dvh_match_numpy(capsys, openkbp_dir, case):
    path = openkbp_dir / "validation" / f"{case}.npz"
    raw = np.load(path)
    voxel_cc = float(np.prod(raw["voxel_dimensions_mm"].astype(np.float64))) / 1000.0
    info = run_json(capsys, ["info", str(path), "--json"])
    assert info["grid"]["shape"] == [128, 128, 128]
    assert np.allclose(info["grid"]["spacing_mm"], raw["voxel_dimensions_mm"])
    assert all(set(s) == {"name", "role", "volume_cc"} for s in info["structures"])
    assert all(set(p) == {"structure", "dose_gy", "fractions"} for p in info["prescription"])
    vols = {s["name"]: s["volume_cc"] for s in info["structures"]}
    roles = {s["name"]: s["role"] for s in info["structures"]}
    masks = {str(n): ((raw["masks"] >> i) & 1).astype(bool) for i, n in enumerate(raw["roi_names"])}
    masks = {n: m for n, m in masks.items() if m.any()}
    masks["External"] = raw["possible_dose_mask"].astype(bool)
    assert set(vols) == set(masks)
    for name, m in masks.items():
        # float32 voxel size -> relative 1e-6 is the rounding floor
        assert vols[name] == pytest.approx(m.sum() * voxel_cc, rel=1e-6), name
    assert roles["External"] == "EXTERNAL" and roles["PTV70"] == "TARGET" and roles["SpinalCord"] == "OAR"
    rx = {p["structure"]: (p["dose_gy"], p["fractions"]) for p in info["prescription"]}
    assert rx["PTV70"] == (70.0, 35)

    doc = run_json(capsys, ["dvh", str(path), "--dose", str(path), "--json"])
    assert set(doc) == {"structures"}
    dvh = doc["structures"]
    dose_gy = raw["dose_cgy"].astype(np.float32) / np.float32(100.0)
    assert set(dvh) == set(masks)
    for name, m in masks.items():
        ref = reference_endpoints(dose_gy[m].astype(np.float64), voxel_cc)
        assert set(dvh[name]) == set(ENDPOINTS)
        for k in ENDPOINTS:
            # float32 dose -> 1e-6 relative is the rounding floor
            assert dvh[name][k] == pytest.approx(ref[k], rel=1e-6, abs=1e-6), (name, k)


def test_dvh_of_a_saved_dose_file(capsys, tmp_path, demo_case):
    from core.io.dosefile import save_dose_npz
    from core.io.loader import load_patient
    from core.patient import Dose

    p = load_patient(demo_case)
    dose = Dose(p.doses["reference"].dose_gy * 0.5, p.grid)
    out = tmp_path / "half.npz"
    save_dose_npz(out, dose)
    full = run_json(capsys, ["dvh", str(demo_case), "--dose", str(demo_case), "--json"])["structures"]
    half = run_json(capsys, ["dvh", str(demo_case), "--dose", str(out), "--json"])["structures"]
    for name in full:
        assert half[name]["D95"] == pytest.approx(full[name]["D95"] / 2, rel=1e-5)
        assert half[name]["volume_cc"] == full[name]["volume_cc"]


def test_tables_without_json(capsys, demo_case):
    assert main(["info", str(demo_case)]) == 0
    out = capsys.readouterr().out
    assert "PTV70" in out and "70 Gy in 35 fractions" in out
    assert main(["dvh", str(demo_case), "--dose", str(demo_case)]) == 0
    assert "D0.1cc" in capsys.readouterr().out


def test_phantom_info(capsys, tg119_dir):
    info = run_json(capsys, ["info", "phantom:tg119", "--phantom-file", str(tg119_dir / "tg119.npz"), "--json"])
    assert info["prescription"] == [{"structure": "OuterTarget", "dose_gy": 50.0, "fractions": 25}]
    assert {s["name"] for s in info["structures"]} == {"Core", "OuterTarget", "BODY"}


# ---- bad input: exit 2, one line on stderr naming the file, nothing on stdout, no traceback
def _bad_files(tmp_path, demo_case):
    text = tmp_path / "notes.npz"
    text.write_text("not numpy")
    nokeys = tmp_path / "nokeys.npz"
    np.savez(nokeys, ct=np.zeros((4, 4, 4), np.int16))
    shapes = tmp_path / "shapes.npz"
    z = dict(np.load(demo_case))
    z["masks"] = z["masks"][:64]
    np.savez(shapes, **z)
    wrongdose = tmp_path / "wrongdose.npz"
    np.savez(wrongdose, dose_gy=np.zeros((64, 64, 64), np.float32), spacing_mm=[1, 1, 1], origin_mm=[0, 0, 0])
    return {"missing": (["info", str(tmp_path / "absent.npz")], "absent.npz"),
            "non-npz": (["info", str(text)], "notes.npz"),
            "missing keys": (["info", str(nokeys)], "nokeys.npz"),
            "wrong shapes": (["info", str(shapes)], "shapes.npz"),
            "dose of wrong shape": (["dvh", str(demo_case), "--dose", str(wrongdose)], "wrongdose.npz"),
            "missing dose": (["dvh", str(demo_case), "--dose", str(tmp_path / "nodose.npz")], "nodose.npz"),
            "unknown phantom": (["info", "phantom:nosuch"], "phantom:nosuch")}


@pytest.mark.parametrize("case", ["missing", "non-npz", "missing keys", "wrong shapes", "dose of wrong shape",
                                  "missing dose", "unknown phantom"])
def test_bad_input_in_process(capsys, tmp_path, demo_case, case):
    argv, named = _bad_files(tmp_path, demo_case)[case]
    rc = main(argv + ["--json"])
    out, err = capsys.readouterr()
    assert rc == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and named in lines[0] and lines[0].startswith("openatp: "), err
    assert "Traceback" not in err


@pytest.mark.parametrize("case", ["non-npz", "dose of wrong shape"])
def test_bad_input_subprocess(tmp_path, demo_case, case):
    argv, named = _bad_files(tmp_path, demo_case)[case]
    res = subprocess.run([sys.executable, "-m", "app.cli", *argv, "--json"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 2
    assert res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], res.stderr
