"""Refiner training on the coarse network's own predictions: the predictions are written as
inference makes them and tied to their network, and a refiner trained on them learns a
systematic mistake that the reference-only recipe cannot see."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from core.errors import InputError  # noqa: E402
from core.io.atomic import atomic_save_npz  # noqa: E402
from core.prediction.cache import load_cache  # noqa: E402
from core.prediction.preprocess import full_res_channels  # noqa: E402
from core.prediction.refiner import load_refiner, refine  # noqa: E402
from core.prediction.sites import get_site  # noqa: E402
from core.prediction.stacking import (SOURCE_FILE, coarse_predictions, load_coarse_prediction,  # noqa: E402
                                      weights_digest)
from core.prediction.train import _canonical_from_cache  # noqa: E402
from core.prediction.train_refiner import RefinerTrainConfig, train_refiner  # noqa: E402

from .synth import write_case  # noqa: E402
from .test_model_io import tiny_model  # noqa: E402

SITE = get_site("hn")


@pytest.fixture(scope="module")
def cache(four_case_cache):
    return four_case_cache


def test_predictions_are_inferences_of_the_named_network_and_refuse_another(cache, tmp_path):
    from core.prediction.predict import DosePredictor

    tiny_model(tmp_path / "m")
    r = coarse_predictions(tmp_path / "m", cache, tmp_path / "p", log=lambda *_: None)
    assert r["written"] == r["n_cases"] == 4 and r["dose_score_gy"] > 0
    src = json.loads((tmp_path / "p" / SOURCE_FILE).read_text())
    pred = DosePredictor(tmp_path / "m", "cpu", refiner=False)
    assert src["weights_sha256"] == weights_digest(pred.nets)
    c = load_cache(cache)[2]
    cc = _canonical_from_cache(c, SITE)
    expect = pred.coarse_dose(cc, full_res_channels(cc, SITE), pred.default_tta)
    got = load_coarse_prediction(tmp_path / "p", c.pid, c.dose_gy.shape)
    np.testing.assert_allclose(got, expect, atol=0.02)  # stored as float16 Gy
    # an interrupted run continues; another network's predictions never mix in
    assert coarse_predictions(tmp_path / "m", cache, tmp_path / "p", log=lambda *_: None)["written"] == 0
    tiny_model(tmp_path / "m2", seed=5)
    with pytest.raises(InputError):
        coarse_predictions(tmp_path / "m2", cache, tmp_path / "p", log=lambda *_: None)
    with pytest.raises(InputError):
        load_coarse_prediction(tmp_path / "p", c.pid, (3, 3, 3))


def test_a_refiner_trained_on_the_predictions_learns_their_systematic_mistake(cache, tmp_path):
    """The 'network' here predicts every dose 20 % too low. A refiner that sees those
    predictions learns to lift them on a held-out case; the error must fall by half."""
    cases = load_cache(cache)
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / SOURCE_FILE).write_text(json.dumps({"weights_sha256": "synthetic"}))
    for c in cases:
        atomic_save_npz(folder / f"{c.pid}.npz", up=(0.8 * c.dose_gy).astype(np.float16))
    cfg = RefinerTrainConfig(steps=240, patch=16, patches_per_case=4, width=8, dilations=(1, 2, 1), lr=1e-2,
                             lr_min=1e-4, checkpoint_every_s=1e9, limit_train=3, stacked_dir=str(folder),
                             p_stacked=1.0, stacked_gain=0.0)
    r = train_refiner(cache, tmp_path / "r", cfg, log=lambda *_: None)
    net, meta = load_refiner(r["path"])
    assert meta["stacked_on"]["weights_sha256"] == "synthetic"
    c = cases[3]  # not among the 3 training cases
    anat = full_res_channels(_canonical_from_cache(c, SITE), SITE)
    up = 0.8 * c.dose_gy
    out = refine(net, anat, up, c.body, SITE.reference_dose_gy)
    before = np.abs(up - c.dose_gy)[c.body].mean()
    after = np.abs(out - c.dose_gy)[c.body].mean()
    assert after < 0.5 * before, (before, after)


def test_stacked_training_without_predictions_is_refused(cache, tmp_path):
    cfg = RefinerTrainConfig(steps=2, patch=12, width=4, dilations=(1,), stacked_dir=str(tmp_path / "none"),
                             p_stacked=1.0)
    with pytest.raises(InputError):
        train_refiner(cache, tmp_path / "r", cfg, log=lambda *_: None)


def test_openatp_train_refiner_stacked_on_a_network(tmp_path, capsys):
    from app.cli import main

    for split, seeds in (("train", (1, 2)), ("validation", (3,))):
        (tmp_path / "d" / split).mkdir(parents=True)
        for s in seeds:
            write_case(tmp_path / "d" / split / f"pt_{s}.npz", shape=(20, 20, 16), seed=s)
    tiny_model(tmp_path / "net")
    args = ["train", "--site", "hn", "--data", str(tmp_path / "d"), "--stage", "refiner", "--steps", "8",
            "--patch", "12", "--width", "4", "--dilations", "1,2", "--device", "cpu", "--json"]
    assert main(args + ["--out", str(tmp_path / "r0")]) == 0
    capsys.readouterr()
    rc = main(args + ["--out", str(tmp_path / "r1"), "--stacked-on", str(tmp_path / "net"),
                      "--init-refiner", str(tmp_path / "r0" / "refiner.pt")])
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 8
    assert len(list((tmp_path / "r1" / "stacked").glob("pt_*.npz"))) == 2
    _, meta = load_refiner(tmp_path / "r1" / "refiner.pt")
    from core.prediction.predict import DosePredictor
    assert meta["stacked_on"]["weights_sha256"] == weights_digest(DosePredictor(tmp_path / "net").nets)
    assert meta["recipe"]["init_from"].endswith("refiner.pt")
    rc = main(args + ["--out", str(tmp_path / "r2"), "--p-stacked", "1.5"])
    assert rc == 2 and "--p-stacked" in capsys.readouterr().err


def test_the_predictor_warns_when_a_stacked_refiner_meets_another_network(tmp_path):
    from core.prediction.predict import DosePredictor
    from core.prediction.refiner import RefinerConfig, build_refiner, save_refiner

    from .test_preprocess import dicom_patient

    tiny_model(tmp_path / "m")
    net = DosePredictor(tmp_path / "m").nets
    ref = build_refiner(RefinerConfig(11, 4, (1,)))
    own = {"weights_sha256": weights_digest(net), "tta": False, "tta_framings": 1}
    save_refiner(tmp_path / "m" / "refiner.pt", ref, {"pool": 2, "reference_dose_gy": 70.0, "stacked_on": own})
    assert not any("refiner" in w for w in DosePredictor(tmp_path / "m").predict(dicom_patient()).warnings)
    save_refiner(tmp_path / "m" / "refiner.pt", ref,
                 {"pool": 2, "reference_dose_gy": 70.0, "stacked_on": {**own, "weights_sha256": "other"}})
    warnings = [w for w in DosePredictor(tmp_path / "m").predict(dicom_patient()).warnings if "refiner" in w]
    assert len(warnings) == 1 and "another network" in warnings[0]
