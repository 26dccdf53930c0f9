"""CUDA and the CPU plan alike: optimizer, pipeline and prediction agree.

The optimizer runs its batched goal penalties on CUDA and the per-goal path on the CPU
(``OptimizerOptions.batched_penalties``), so these also compare the two paths end to end.

These run only where a CUDA GPU is present (a lent device machine, ``bench/gpu_session.sh``);
CI has none. The dose engine's CPU/CUDA agreement is in ``tests/core/dose/test_cuda.py``.
Tolerances are physical, not fitted: the optimizer is iterative in float32, so the two
devices' summation orders give slightly different paths; both must meet the same goals and
give doses within 2 % of the prescription of each other where it matters.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")


def test_optimizer_meets_the_same_goals_on_cuda_as_on_cpu():
    from core.goals.evaluate import evaluate_goals
    from core.optimization.fluence import optimize_fluence
    from tests.core.optimization.test_fluence import RX, TG119_LIKE
    from tests.core.optimization.toy import c_shape, toy_dij

    grid, masks = c_shape(40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dij = toy_dij(grid, masks["Body"])
    runs = {}
    for dev in ("cpu", "cuda"):
        # the optimizer builds its own copy of the matrix on the device it is given
        out = optimize_fluence(dij, TG119_LIKE, masks, RX, device=torch.device(dev))
        dose = dij.dose_on_grid(out["weights"])
        runs[dev] = (dose, evaluate_goals(TG119_LIKE, dose, masks, grid.voxel_volume_cc))
    for dev, (_, res) in runs.items():
        assert all(r.met for r in res), (dev, [(r.goal.label, r.achieved) for r in res])
    target = masks["Target"]
    mean_cpu, mean_gpu = (float(runs[d][0][target].mean()) for d in ("cpu", "cuda"))
    assert abs(mean_cpu - mean_gpu) <= 0.02 * RX["Target"]


def test_pipeline_plans_the_phantom_on_cuda_as_on_cpu():
    from core.pipeline import PlanOptions, plan_patient
    from tests.core.test_pipeline import GOALS, small_patient

    doses = {}
    for dev in ("cpu", "cuda"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = plan_patient(small_patient(), None, goals=GOALS,
                             options=PlanOptions(predict=False, beams="imrt5", device=dev))
        assert r.metrics["all_p1_met"], (dev, r.metrics["goals"])
        assert r.metrics["device"].startswith(dev)
        doses[dev] = r.final_dose.dose_gy
    ptv = small_patient().structures["PTV70"].mask
    assert abs(float(doses["cpu"][ptv].mean()) - float(doses["cuda"][ptv].mean())) <= 0.02 * 70.0
    assert abs(float(doses["cpu"].max()) - float(doses["cuda"].max())) <= 0.02 * 70.0


def test_prediction_on_cuda_matches_cpu(demo_case):
    from core.io.openkbp import load_openkbp
    from core.prediction.predict import DosePredictor
    from core.prediction.scores import dose_score

    patient = load_openkbp(demo_case)
    cpu = DosePredictor(device="cpu", site="hn").predict(patient).dose.dose_gy
    gpu = DosePredictor(device="cuda", site="hn").predict(patient).dose.dose_gy
    # float32 convolutions (cuDNN may use TF32): a few hundredths of a Gray at most
    assert dose_score(gpu, cpu, patient.possible_dose_mask) <= 0.05
    assert np.abs(gpu - cpu).max() <= 1.0


def test_a_replayed_cuda_graph_evaluation_equals_the_eager_one():
    """Objective, gradient, achieved values and maximum from graph replays equal eager
    evaluations at fresh fluences, at every kind of level, and a whole optimization with
    graphs meets the same goals as one without (graphs were really captured and replayed)."""
    from core.optimization.fluence import OptimizerOptions, _Level, _Problem, optimize_fluence
    from tests.core.optimization.test_fluence import RX, TG119_LIKE
    from tests.core.optimization.toy import c_shape, toy_dij

    grid, masks = c_shape(40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dij = toy_dij(grid, masks["Body"])
    cuda = torch.device("cuda")
    eager, graphed = (_Problem(dij, TG119_LIKE, masks, RX, OptimizerOptions(cuda_graphs=g), cuda, [])
                      for g in (False, True))
    assert eager.graphs is None and graphed.graphs is not None
    rng = np.random.default_rng(0)
    levels = [_Level(2, [(1, 54.7, 1.0), (2, 24.8, 0.1)], [(0, 50.25)], 100.0, final=k == 1,
                     obj_norm=0.7, max_dose_shift_gy=0.3 * k, hottest_weight=1.0 if k == 2 else 0.0) for k in range(3)]
    for level in levels:
        for _ in range(4):
            x = rng.uniform(0.5, 1.5, eager.n_beamlets)
            (fa, ga), (fb, gb) = eager.fg(x, level), graphed.fg(x, level)
            assert fb == pytest.approx(fa, rel=1e-9)
            # A^T g is a float32 product, and the voxel gradient's atomic sums come in a
            # different order in any two CUDA evaluations (replayed or not): an entry that
            # is a small difference of large terms differs at float32 resolution of those
            # terms (seen: 9.5e-10 on an entry of 1.6e-4, gradient scale 0.17)
            np.testing.assert_allclose(gb, ga, rtol=1e-6, atol=1e-6 * np.abs(ga).max())
            (aa, ma), (ab, mb) = eager.last_achieved(), graphed.last_achieved()
            assert ab == pytest.approx(aa, rel=1e-9) and mb == pytest.approx(ma, rel=1e-12)
    assert graphed.graphs.note is None, graphed.graphs.note
    assert graphed.graphs.n_captured == 3 and graphed.graphs.n_replayed >= 6

    from core.goals.evaluate import evaluate_goals
    outs = {g: optimize_fluence(dij, TG119_LIKE, masks, RX, device=cuda, options=OptimizerOptions(cuda_graphs=g))
            for g in (False, True)}
    assert outs[True]["cuda_graphs"]["replayed"] > 0 and outs[True]["cuda_graphs"]["note"] is None
    for out in outs.values():
        res = evaluate_goals(TG119_LIKE, dij.dose_on_grid(out["weights"]), masks, grid.voxel_volume_cc)
        assert all(r.met for r in res), [(r.goal.label, r.achieved) for r in res]
