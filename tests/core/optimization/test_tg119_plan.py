"""TG-119 C-shape with its own goal list, against pyRadPlan's reference plan of the phantom.

The plan is made as ``openatp plan phantom:tg119 --site tg119`` makes it (9 beams, 3 mm
dose grid, the site's optimizer options). The reference dose (``../shared/data/tg119``,
pyRadPlan 0.5.0 with matRad's objective set) is the outside yardstick: our plan, scaled to
the reference's target D95 (49.15 Gy), must spare the core more (D10 below 23.67 Gy) and
be more conformal (van't Riet CI at 95 % of 50 Gy above 0.851). About 25 s on 2 cores.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from core.dose.beams import load_template as load_beams
from core.dose.influence import compute_influence
from core.evaluation.dvh import dose_at_volume_pct, structure_doses
from core.evaluation.indices import conformity_paddick
from core.goals.templates import goals_for_patient
from core.io.loader import load_patient
from core.optimization.fluence import OptimizerOptions, optimize_plan
from core.pipeline import SITE_OPTIMIZER_OPTIONS


@pytest.fixture(scope="module")
def tg119(tg119_dir):
    patient = load_patient("phantom:tg119", tg119_dir / "tg119.npz")
    goals, _ = goals_for_patient(patient, "tg119")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dij = compute_influence(patient, load_beams("imrt9"), beamlet_mm=5.0, dose_grid_mm=3.0, device="cpu")
    plan = optimize_plan(patient, goals, dij, options=OptimizerOptions(**SITE_OPTIMIZER_OPTIONS["tg119"]))
    ref = np.load(tg119_dir / "pyradplan_reference.npz")["dose_pyradplan_gy"]
    return patient, plan, ref


def _quality(patient, dose):
    tgt = patient.structures["OuterTarget"].mask
    core = patient.structures["Core"].mask
    return {"D95": dose_at_volume_pct(structure_doses(dose, tgt), 95),
            "core_D10": dose_at_volume_pct(structure_doses(dose, core), 10),
            "CI": conformity_paddick(dose, tgt, 0.95 * 50.0, patient.external_mask())}


def test_every_tg119_goal_is_met(tg119):
    patient, plan, ref = tg119
    assert plan.all_p1_met
    assert all(r.met for r in plan.goal_results), [(r.goal.label, r.achieved) for r in plan.goal_results]


def test_tg119_beats_the_reference_plan_at_its_coverage(tg119):
    patient, plan, ref = tg119
    q_ref = _quality(patient, ref)
    assert q_ref["D95"] == pytest.approx(49.15, abs=0.01)
    assert q_ref["core_D10"] == pytest.approx(23.67, abs=0.01)
    assert q_ref["CI"] == pytest.approx(0.851, abs=0.001)
    scaled = plan.dose_gy * np.float32(q_ref["D95"] / _quality(patient, plan.dose_gy)["D95"])
    q = _quality(patient, scaled)
    assert q["D95"] == pytest.approx(q_ref["D95"], abs=0.01)
    assert q["core_D10"] < q_ref["core_D10"]
    assert q["CI"] > q_ref["CI"]
