"""`openatp refine` through the CLI on the small synthetic phantom: a hot patch is lowered
warm with P1 kept, the outputs of `openatp plan` plus the refinement log, bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from app.cli import main
from tests.app.test_cli_plan import write_openkbp_like
from tests.core.test_pipeline import small_patient

GOALS = {"goals": [
    {"priority": 1, "structure": "PTV70", "type": "min_dose_at_volume", "volume_pct": 95, "dose_gy": 70.0},
    {"priority": 1, "structure": "SpinalCord", "type": "max_dose_at_volume", "volume_cc": 0.03, "dose_gy": 45.0},
    {"priority": 2, "structure": "SpinalCord", "type": "max_mean", "dose_gy": 40.0},
    # a coverage aim below P1 that sequencing leaves a little short: normalisation restores it
    {"priority": 2, "structure": "PTV70", "type": "min_dose_at_volume", "volume_pct": 99, "dose_gy": 70.0},
]}


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    d = tmp_path_factory.mktemp("refine")
    write_openkbp_like(d / "pt_x.npz", small_patient())
    (d / "goals.json").write_text(json.dumps(GOALS))
    # the patch is refined against the goals without the P2 coverage aim, which the patch
    # (4 mm from the PTV, at the same priority) could only be lowered against
    (d / "goals3.json").write_text(json.dumps({"goals": GOALS["goals"][:3]}))
    rc = main(["plan", str(d / "pt_x.npz"), "--goals", str(d / "goals.json"), "--no-predict", "--beams", "imrt5",
               "--out", str(d / "plan"), "--device", "cpu", "--keep-dij"])
    assert rc == 0
    return d


def test_refine_with_a_hot_patch(planned, capsys):
    d = planned
    capsys.readouterr()
    out = d / "refined"
    rc = main(["refine", str(d / "plan"), "--patient", str(d / "pt_x.npz"), "--patch-hot", "80", "--patch-margin", "4",
               "--goals", str(d / "goals3.json"), "--rounds", "3", "--out", str(out), "--device", "cpu", "--json"])
    assert rc == 0
    m = json.loads(capsys.readouterr().out)                  # exactly one JSON document
    for f in ("dose.npz", "RTPLAN.dcm", "RTDOSE.dcm", "metrics.json", "report.html", "plan_state.npz",
              "refine_log.json", "helper_rules.json", "history/history.json"):
        assert (out / f).is_file(), f
    assert m == json.loads((out / "metrics.json").read_text())
    s = m["refine"]
    assert s["dose_matrix_reused"] and s["accepted_rounds"] >= 1 and m["all_p1_met"]
    patch = s["patch"]
    # the patch carries a near-max goal (D0.03cc <= 80 % of 70 Gy), unmet in the first plan:
    # the delivered plan meets it, its near-max fell by the issue's >= 5 %, and the hottest
    # single voxel (not what the goal aims at) fell too
    goal = next(g for g in m["goals"] if g["structure"] == "Patch_hot")
    assert goal["control"] and goal["met"], goal
    log = json.loads((out / "refine_log.json").read_text())
    before = next(mv["from"] for mv in log["rounds"][0]["moved"] if mv["goal"].startswith("P2 Patch_hot"))
    assert before > goal["dose_gy"] and goal["achieved"] <= 0.95 * before, (before, goal)
    assert patch["max_after_gy"] < patch["max_before_gy"], patch
    assert log["rounds"][0]["changes"] and log["summary"]["patch"]["conflicts"]   # 4 mm from the PTV: warned
    assert set(log["oar_change_by_structure"]) == {"SpinalCord"}
    hist = json.loads((out / "history" / "history.json").read_text())
    names = [v["name"] for v in hist["versions"]]
    assert names[0] == "plan" and names[-1] == "refined" and len(names) == 2 + s["accepted_rounds"]
    assert names[1].startswith("round ") and hist["versions"][1]["parent"] == "plan"
    # the refined plan is a plan folder like any other: it can be warm-started or refined again
    rules = json.loads((out / "helper_rules.json").read_text())["rules"]
    assert rules[0]["kind"] == "hot_patch" and rules[0]["threshold_pct"] == 80.0


def test_zero_rounds_reproduce_the_plan(planned, capsys):
    # the refined plan goes through the same sequencing, normalisation and metrics as
    # 'openatp plan' (core.optimization.refine mirrors the pipeline's last steps)
    d = planned
    rc = main(["refine", str(d / "plan"), "--patient", str(d / "pt_x.npz"), "--rounds", "0", "--out", str(d / "r0"),
               "--device", "cpu", "--json"])
    assert rc == 0
    m = json.loads(capsys.readouterr().out)
    plan = json.loads((d / "plan" / "metrics.json").read_text())
    assert m["goals"] == plan["goals"] and m["normalization_factor"] == plan["normalization_factor"]
    assert m["total_mu"] == plan["total_mu"] and m["targets"] == plan["targets"]
    with np.load(d / "plan" / "dose.npz") as a, np.load(d / "r0" / "dose.npz") as b:
        assert np.array_equal(a["dose_gy"], b["dose_gy"])


def test_refine_recomputes_a_matrix_that_was_not_kept(planned, capsys):
    d = planned
    plan2 = d / "plan_no_dij"
    shutil.copytree(d / "plan", plan2)
    with np.load(plan2 / "plan_state.npz") as z:
        state = {k: z[k] for k in z.files if not k.startswith("dij_")}
    np.savez_compressed(plan2 / "plan_state.npz", **state)
    rc = main(["refine", str(plan2), "--patient", str(d / "pt_x.npz"), "--rounds", "1", "--out", str(d / "r2"),
               "--device", "cpu", "--json"])
    assert rc == 0
    m = json.loads(capsys.readouterr().out)
    assert m["refine"]["dose_matrix_reused"] is False and m["all_p1_met"]


@pytest.mark.parametrize("extra, match", [
    (["--patch-hot", "150"], "is empty"),
    (["--patch-hot", "80", "--patch-region", "Nowhere"], "'Nowhere' does not exist"),
    (["--goals", "GOALS_MISSING"], "goals file not found"),
    (["--rounds", "-1"], "--rounds"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(planned, capsys, extra, match):
    d = planned
    extra = [str(d / "nope.json") if a == "GOALS_MISSING" else a for a in extra]
    out = d / "bad"
    capsys.readouterr()
    rc = main(["refine", str(d / "plan"), "--patient", str(d / "pt_x.npz"), "--out", str(out), "--device", "cpu"]
              + extra)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and match in err[-1] and err[-1].startswith("openatp:")
    assert not out.exists()


def test_not_a_plan_folder(tmp_path, capsys):
    rc = main(["refine", str(tmp_path), "--patient", "phantom:water", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "not an 'openatp plan' output folder" in err and err.count("\n") == 1
