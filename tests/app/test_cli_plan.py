"""`openatp plan` through the CLI: one patient, a batch with a bad patient, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from app.cli import main
from tests.core.test_pipeline import small_patient


def write_openkbp_like(path, patient) -> None:
    """The synthetic phantom in OpenKBP's compact format (small, not 128^3: the loader
    accepts any consistent shape)."""
    from core.geometry import OPENKBP_AXES, Grid, resample_to_grid

    src = patient.grid
    dst = Grid((src.shape[1], src.shape[2], src.shape[0]), (src.spacing_mm[1], src.spacing_mm[2], src.spacing_mm[0]),
               (src.origin_mm[1], src.origin_mm[2], src.origin_mm[0] + (src.shape[0] - 1) * src.spacing_mm[0]),
               OPENKBP_AXES)
    names = ["Brainstem", "SpinalCord", "RightParotid", "LeftParotid", "Esophagus", "Larynx", "Mandible",
             "PTV56", "PTV63", "PTV70"]
    masks = np.zeros(dst.shape, np.uint16)
    for n, s in patient.structures.items():
        if n in names:
            m = resample_to_grid(s.mask.astype(np.uint8), src, dst, order=0) > 0
            masks |= (m.astype(np.uint16) << names.index(n))
    body = resample_to_grid(patient.external_mask().astype(np.uint8), src, dst, order=0) > 0
    ct = np.where(body, 1000, 0).astype(np.int16)
    np.savez_compressed(path, ct=ct, masks=masks, roi_names=np.array(names), possible_dose_mask=body,
                        voxel_dimensions_mm=np.array(dst.spacing_mm, np.float32))


GOALS = {"goals": [
    {"priority": 1, "structure": "PTV70", "type": "min_dose_at_volume", "volume_pct": 95, "dose_gy": 70.0},
    {"priority": 2, "structure": "SpinalCord", "type": "max_dose_at_volume", "volume_cc": 0.03, "dose_gy": 45.0},
]}


def test_batch_plans_good_patients_and_reports_the_bad_one(tmp_path, capsys):
    cases = tmp_path / "cases"
    cases.mkdir()
    write_openkbp_like(cases / "pt_good.npz", small_patient())
    np.savez(cases / "pt_bad.npz", ct=np.zeros((4, 4, 4)))  # missing keys
    goals = tmp_path / "goals.json"
    goals.write_text(json.dumps(GOALS))
    out = tmp_path / "out"
    rc = main(["plan", str(cases), "--goals", str(goals), "--no-predict", "--beams", "imrt5", "--out", str(out),
               "--device", "cpu", "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert rc == 2  # one patient failed
    rows = {r["patient"]: r for r in summary["patients"]}
    assert rows["pt_good"]["status"] == "ok" and rows["pt_bad"]["status"] == "failed"
    assert "missing" in rows["pt_bad"]["error"]
    assert (out / "pt_good" / "metrics.json").is_file()
    assert not (out / "pt_bad").exists()  # nothing half-written
    assert (out / "summary.csv").read_text().count("\n") == 3


def test_plan_bad_input_exits_2_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["plan", str(tmp_path / "missing.npz"), "--site", "hn", "--no-predict", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "missing.npz" in err
    assert not out.exists()
    case = tmp_path / "pt_x.npz"
    write_openkbp_like(case, small_patient())
    rc = main(["plan", str(case), "--site", "no-such-site", "--no-predict", "--out", str(out)])
    assert rc == 2 and "no-such-site" in capsys.readouterr().err
    assert not out.exists()
    rc = main(["plan", str(case), "--site", "hn", "--no-predict", "--time-limit", "-5", "--out", str(out)])
    assert rc == 2 and "--time-limit" in capsys.readouterr().err
    assert not out.exists()


def test_plan_time_limit_defaults_to_the_two_minute_budget_and_zero_lifts_it():
    from types import SimpleNamespace

    from app.commands.plan import _options
    from core.pipeline import DEFAULT_TIME_BUDGET_S

    def opts(limit):
        return _options(SimpleNamespace(no_predict=True, beams=None, device="cpu", dose_grid=None, model=None,
                                        time_limit=limit))

    assert opts(None).time_budget_s == DEFAULT_TIME_BUDGET_S < 120.0
    assert opts(0.0).time_budget_s is None
    assert opts(45.0).time_budget_s == 45.0
