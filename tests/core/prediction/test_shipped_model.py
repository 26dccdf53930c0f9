"""The shipped head-and-neck model on the demo case (validation pt_201).

A real check, not a smoke test: it loads ``resources/models/hn/`` and fails when the
OpenKBP dose score (mean absolute error in Gy inside the possible-dose mask, against
the clinical plan) is above the issue's 3.0 Gy target. It fails until trained weights are
installed there. Inference speed (4 s a case on this CPU) is measured by
``bench/prediction.py``, not here: a timed test fails on a busy machine, not on a slow model.

The shipped model (three U-Nets averaged, each with its weights averaged over its last
epochs; a full-resolution refiner trained on their mean prediction of the training cases;
the left-right test-time flip and two framings of the input, all applied by default) scores
2.63 Gy on this case and 3.00 Gy (2.998) over the validation split (MODEL_CARD.md). With
one network it scored 2.66 Gy here and 3.03 Gy over the split; with the refiner trained
only on reference doses, 2.70 and 3.18 Gy. A regression guard holds the shipped model to what it measured here,
so a worse model cannot be installed silently.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from core.prediction.predict import default_model_path  # noqa: E402
from core.prediction.scores import dose_score  # noqa: E402

DOSE_SCORE_TARGET_GY = 3.0
#: What the shipped model measured on this case when it was installed (MODEL_CARD.md), plus
#: 0.05 Gy for floating-point and thread-count differences between machines.
SHIPPED_DEMO_SCORE_GY = 2.63 + 0.05


@pytest.fixture(scope="module")
def demo_prediction(demo_case):
    from core.io.openkbp import load_openkbp
    from core.prediction.predict import DosePredictor

    path = default_model_path("hn") / "model.pt"
    assert path.is_file(), f"no shipped model at {path}: install the trained weights (see MODEL_CARD.md)"
    assert path.stat().st_size < 16 * 2**20, "each shipped model file must stay under 16 MiB"
    patient = load_openkbp(demo_case)
    result = DosePredictor(device="cpu", site="hn").predict(patient)
    ref = patient.doses["reference"].dose_gy
    return result, dose_score(result.dose.dose_gy, ref, patient.possible_dose_mask)


def test_shipped_model_predicts_the_demo_case_no_worse_than_shipped(demo_prediction):
    result, score = demo_prediction
    assert score <= SHIPPED_DEMO_SCORE_GY, f"dose score {score:.2f} Gy on the demo case, worse than the shipped model"
    assert np.all(result.dose.dose_gy >= 0)


def test_shipped_model_applies_its_refiner_and_flip(demo_prediction):
    result, _ = demo_prediction
    assert result.model["refiner"] and result.model["refiner"].endswith("refiner.pt")
    assert result.model["tta_default"] is True
    # the refiner learnt this network's mistakes: it must sit beside that same network
    assert not any("refiner" in w for w in result.warnings), result.warnings


def test_shipped_model_meets_the_dose_score_target_on_the_demo_case(demo_prediction):
    _, score = demo_prediction
    assert score <= DOSE_SCORE_TARGET_GY, f"dose score {score:.2f} Gy on the demo case (target <= 3.0 Gy)"
