"""The full-resolution refiner: an untrained one changes nothing, its file round-trips and
bad files are refused, training restores a fall-off the coarse grid smeared, and the
predictor applies it only when asked or shipped."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from core.errors import ModelError  # noqa: E402
from core.prediction.cache import load_cache  # noqa: E402
from core.prediction.preprocess import POOL, pad_to_multiple, pad_volume, pool_dose, upsample_dose  # noqa: E402
from core.prediction.refiner import RefinerConfig, build_refiner, load_refiner, refine, save_refiner  # noqa: E402
from core.prediction.sites import get_site  # noqa: E402
from core.prediction.train_refiner import RefinerTrainConfig, _sample_case, coarse_dose_up, train_refiner  # noqa: E402

from .synth import write_case  # noqa: E402

SITE = get_site("hn")


@pytest.fixture(scope="module")
def cache(four_case_cache):
    return four_case_cache


@pytest.mark.parametrize("width,dil", [(4, (1,)), (8, (1, 2, 1)), (6, (1, 2, 4, 1))])
def test_an_untrained_refiner_returns_the_dose_it_was_given(width, dil):
    net = build_refiner(RefinerConfig(11, width, dil))
    a, d = torch.randn(1, 11, 10, 12, 8), torch.rand(1, 1, 10, 12, 8)
    out = net(a, d)
    assert out.shape == d.shape
    assert torch.equal(out, d)
    assert RefinerConfig(11, width, dil).receptive_field == 1 + 2 * sum(dil)


def test_save_load_round_trip_and_bad_files(tmp_path):
    torch.manual_seed(0)
    net = build_refiner(RefinerConfig(11, 4, (1, 2)))
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.1)
    a, d = torch.randn(1, 11, 6, 6, 6), torch.rand(1, 1, 6, 6, 6)
    path = save_refiner(tmp_path / "refiner.pt", net, {"pool": POOL, "reference_dose_gy": 70.0})
    net2, meta = load_refiner(path)
    assert meta["pool"] == POOL
    with torch.no_grad():
        assert torch.equal(net(a, d), net2(a, d))
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(ModelError):
        load_refiner(tmp_path / "bad.pt")
    with pytest.raises(ModelError):
        load_refiner(tmp_path / "missing.pt")
    torch.save({"arch": "cad-unet", "state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ModelError):
        load_refiner(tmp_path / "other.pt")


def test_clean_coarse_input_is_the_inference_up_sampling_of_the_pooled_dose(cache):
    c = load_cache(cache)[0]
    shape = pad_to_multiple(c.body.shape, POOL)
    bodyp = pad_volume(c.body, shape)
    lo = pool_dose(pad_volume(c.dose_gy, shape), bodyp, POOL)
    body_lo = bodyp.reshape(shape[0] // 2, 2, shape[1] // 2, 2, shape[2] // 2, 2).mean(axis=(1, 3, 5))
    expect = upsample_dose(lo, body_lo, bodyp, POOL)[tuple(slice(0, s) for s in c.body.shape)]
    np.testing.assert_allclose(coarse_dose_up(c.dose_gy, c.body, POOL), expect, atol=1e-5)


def test_perturbed_coarse_input_differs_but_stays_in_the_body(cache):
    c = load_cache(cache)[0]
    cfg = RefinerTrainConfig(p_clean=0.0)
    up = coarse_dose_up(c.dose_gy, c.body, POOL, np.random.default_rng(3), cfg)
    clean = coarse_dose_up(c.dose_gy, c.body, POOL)
    assert np.abs(up - clean)[c.body].mean() > 0.1
    assert (up >= 0).all() and not up[~c.body].any()
    _, u, y, w, near = _sample_case(c, SITE, np.random.default_rng(0), cfg)
    assert u.shape == y.shape == w.shape == c.body.shape
    assert (w[~c.body] == 0).all() and len(near) > 0


def test_training_restores_what_the_coarse_grid_smeared(cache, tmp_path):
    """On a synthetic held-out case the trained refiner is closer to the true dose than the
    up-sampled coarse dose it starts from (clean coarse input: the resolution loss only)."""
    cfg = RefinerTrainConfig(steps=320, patch=16, patches_per_case=4, width=8, dilations=(1, 2, 1),
                             lr=1e-2, lr_min=1e-4, p_clean=0.5, checkpoint_every_s=1e9,
                             limit_train=3)
    r = train_refiner(cache, tmp_path, cfg, log=lambda *_: None)
    net, _ = load_refiner(r["path"])
    c = load_cache(cache)[3]  # not among the 3 training cases
    from core.prediction.preprocess import full_res_channels
    from core.prediction.train import _canonical_from_cache
    anat = full_res_channels(_canonical_from_cache(c, SITE), SITE)
    up = coarse_dose_up(c.dose_gy, c.body, POOL)
    out = refine(net, anat, up, c.body, SITE.reference_dose_gy)
    before = np.abs(up - c.dose_gy)[c.body].mean()
    after = np.abs(out - c.dose_gy)[c.body].mean()
    assert after < 0.9 * before, (before, after)


def test_the_predictor_applies_a_refiner_beside_the_model_or_when_asked(tmp_path):
    from .test_model_io import tiny_model
    from .test_preprocess import dicom_patient
    from core.prediction.predict import DosePredictor

    tiny_model(tmp_path / "m")
    p = dicom_patient()
    plain = DosePredictor(tmp_path / "m", "cpu")
    assert plain.refiner is None and plain.describe()["refiner"] is None
    d0 = plain.predict(p).dose.dose_gy
    torch.manual_seed(1)
    net = build_refiner(RefinerConfig(11, 4, (1,)))
    torch.nn.init.constant_(net.head.bias, 0.05)  # +3.5 Gy everywhere: visible, easy to check
    save_refiner(tmp_path / "m" / "refiner.pt", net, {"pool": POOL, "reference_dose_gy": 70.0})
    withr = DosePredictor(tmp_path / "m", "cpu")
    assert withr.describe()["refiner"].endswith("refiner.pt")
    d1 = withr.predict(p).dose.dose_gy
    body = p.external_mask()
    inside = body & (d1 > 0) & (d0 > 0)
    assert np.median((d1 - d0)[inside]) == pytest.approx(3.5, abs=0.2)
    assert not d1[~body].any()
    off = DosePredictor(tmp_path / "m", "cpu", refiner=False)
    np.testing.assert_array_equal(off.predict(p).dose.dose_gy, d0)
    save_refiner(tmp_path / "r_other.pt", net, {"pool": POOL, "reference_dose_gy": 60.0})
    with pytest.raises(ModelError):
        DosePredictor(tmp_path / "m", "cpu", refiner=tmp_path / "r_other.pt")


def test_openatp_train_stage_refiner(tmp_path, capsys):
    import json

    from app.cli import main

    for split, seeds in (("train", (1, 2)), ("validation", (3,))):
        (tmp_path / "d" / split).mkdir(parents=True)
        for s in seeds:
            write_case(tmp_path / "d" / split / f"pt_{s}.npz", shape=(20, 20, 16), seed=s)
    rc = main(["train", "--site", "hn", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "m"),
               "--stage", "refiner", "--steps", "8", "--patch", "12", "--width", "4", "--dilations", "1,2",
               "--device", "cpu", "--json"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["stage"] == "refiner" and doc["steps"] == 8
    net, meta = load_refiner(tmp_path / "m" / "refiner.pt")
    assert net.config.dilations == (1, 2) and meta["steps"] == 8
    rc = main(["train", "--site", "hn", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "m2"),
               "--stage", "refiner", "--dilations", "1,x", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "--dilations" in err and not (tmp_path / "m2").exists()


def test_install_ships_the_refiner_and_the_measured_flip_setting(tmp_path):
    from core.prediction.evaluate import install_model
    from core.prediction.predict import DosePredictor
    from .test_model_io import tiny_model

    tiny_model(tmp_path / "run")
    save_refiner(tmp_path / "r.pt", build_refiner(RefinerConfig(11, 4, (1,))),
                 {"pool": POOL, "reference_dose_gy": 70.0})
    score = {"dose_score_gy": 3.0, "dvh_score_gy": 2.0, "n_patients": 1}
    result = {"predict": score, "prescription": {**score, "dose_score_gy": 4.0}, "tta": True, "tta_framings": 2,
              "seconds_per_case": {"mean": 1.0, "median": 1.0, "max": 1.0}, "device": "cpu",
              "peak_rss_mib": 1.0, "members": [], "refiner": str(tmp_path / "r.pt")}
    dest = tmp_path / "dest"
    install_model(tmp_path / "run", result, "hn", dest, refiner=tmp_path / "r.pt")
    pred = DosePredictor(dest, "cpu")
    assert (dest / "refiner.pt").is_file() and pred.refiner is not None and pred.default_tta is True
    assert pred.tta_framings == 2
    install_model(tmp_path / "run", {**result, "tta": False, "tta_framings": 1, "refiner": None}, "hn", dest)
    pred = DosePredictor(dest, "cpu")
    assert not (dest / "refiner.pt").exists() and pred.refiner is None and pred.default_tta is False
    assert pred.tta_framings == 1


def test_the_model_card_says_when_the_shipped_weights_are_an_average(tmp_path):
    from core.prediction.average import average_models
    from core.prediction.evaluate import install_model
    from .test_model_io import tiny_model

    tiny_model(tmp_path / "run")
    average_models([tmp_path / "run" / "model.pt"] * 2, tmp_path / "avg")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "MODEL_CARD.md").write_text("# card\n<!-- measured:start -->\nold\n<!-- measured:end -->\nrest\n")
    score = {"dose_score_gy": 3.0, "dvh_score_gy": 2.0, "n_patients": 1}
    result = {"predict": score, "prescription": {**score, "dose_score_gy": 4.0}, "tta": False,
              "seconds_per_case": {"mean": 1.0, "median": 1.0, "max": 1.0}, "device": "cpu",
              "peak_rss_mib": 1.0, "members": [], "refiner": None}
    install_model(tmp_path / "avg", result, "hn", dest)
    card = (dest / "MODEL_CARD.md").read_text()
    assert "the mean of 2 per-epoch snapshots" in card and "old" not in card and card.endswith("rest\n")


def test_a_widened_refiner_computes_what_the_narrow_one_did():
    from core.prediction.refiner import widen_from

    torch.manual_seed(2)
    small = build_refiner(RefinerConfig(11, 12, (1, 2, 1)))  # width = inputs: no shape coincidence
    for p in small.parameters():
        torch.nn.init.normal_(p, std=0.2)
    wide = build_refiner(RefinerConfig(11, 15, (1, 2, 1)))
    widen_from(wide, small)
    a, d = torch.randn(1, 11, 9, 8, 7), torch.rand(1, 1, 9, 8, 7)
    # float64: in float32 the two widths sum their channels in a different order (up to
    # 7e-6 apart, measured under load), which would hide nothing but fail a tight check
    with torch.no_grad():
        torch.testing.assert_close(wide.double()(a.double(), d.double()), small.double()(a.double(), d.double()),
                                   rtol=1e-12, atol=1e-12)
        wide.float()
        small.float()
        assert not torch.equal(wide(a, d), d)  # the narrow one does change the dose
    # the added channels are live: their weights out get a gradient
    loss = wide(a, d).sum()
    loss.backward()
    assert wide.head.weight.grad[0, 12:].abs().sum() > 0
    with pytest.raises(ModelError):
        widen_from(build_refiner(RefinerConfig(11, 8, (1, 2, 1))), small)
    with pytest.raises(ModelError):
        widen_from(build_refiner(RefinerConfig(11, 16, (1, 2))), small)


def test_the_refiner_flip_makes_refinement_mirror_symmetric():
    """Averaged with its mirror, the refinement of a mirrored patient is the mirror of the
    refinement: left and right are treated alike, which one pass alone does not do."""
    torch.manual_seed(3)
    net = build_refiner(RefinerConfig(11, 4, (1, 2)))
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.2)
    perm = list(range(11))
    for a, b in SITE.mirror_pairs:
        ia, ib = 2 + SITE.oars.index(a), 2 + SITE.oars.index(b)
        perm[ia], perm[ib] = perm[ib], perm[ia]
    rng = np.random.default_rng(0)
    anat = rng.standard_normal((11, 9, 10, 8)).astype(np.float32)
    dose = (40 * rng.random((9, 10, 8))).astype(np.float32)
    body = np.ones(dose.shape, bool)
    m_anat, m_dose = np.ascontiguousarray(anat[perm][:, :, ::-1]), np.ascontiguousarray(dose[:, ::-1])
    one = refine(net, anat, dose, body, 70.0)
    assert not np.allclose(refine(net, m_anat, m_dose, body, 70.0), one[:, ::-1], atol=1e-3)
    both = refine(net, anat, dose, body, 70.0, mirror_perm=perm)
    np.testing.assert_allclose(refine(net, m_anat, m_dose, body, 70.0, mirror_perm=perm), both[:, ::-1], atol=1e-4)


def test_reinstalling_an_ensemble_from_its_own_folder_keeps_its_members(tmp_path):
    from core.prediction.evaluate import install_model
    from core.prediction.model_io import load_model
    from core.prediction.predict import DosePredictor
    from .test_model_io import tiny_model

    dest = tmp_path / "dest"
    tiny_model(dest, seed=0)
    second = tiny_model(tmp_path / "m2", seed=1)
    tiny_model(tmp_path / "m3", seed=2)
    score = {"dose_score_gy": 3.0, "dvh_score_gy": 2.0, "n_patients": 1}
    result = {"predict": score, "prescription": {**score, "dose_score_gy": 4.0}, "tta": False,
              "seconds_per_case": {"mean": 1.0, "median": 1.0, "max": 1.0}, "device": "cpu",
              "peak_rss_mib": 1.0, "refiner": None}
    pred = DosePredictor(dest, "cpu", extra_members=[tmp_path / "m2", tmp_path / "m3"])
    install_model(dest, {**result, "members": [str(m) for m in pred.member_files]}, "hn", dest)
    # evaluated again from the folder (members found beside model.pt, one also named: counted once)
    pred = DosePredictor(dest, "cpu", extra_members=[dest / "model_2.pt"])
    assert [p.name for p in pred.member_files] == ["model.pt", "model_2.pt", "model_3.pt"]
    install_model(dest, {**result, "members": [str(m) for m in pred.member_files]}, "hn", dest)
    kept, _ = load_model(dest / "model_2.pt")
    for name, w in second.state_dict().items():
        np.testing.assert_array_equal(kept.state_dict()[name].numpy(), w.numpy())
    assert (dest / "model_3.pt").is_file()
    # a smaller ensemble installed later leaves no stale member behind
    install_model(dest, {**result, "members": [str(dest / "model.pt"), str(tmp_path / "m3" / "model.pt")]},
                  "hn", dest)
    assert sorted(p.name for p in dest.glob("model*.pt")) == ["model.pt", "model_2.pt"]
