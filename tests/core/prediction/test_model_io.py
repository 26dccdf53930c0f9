"""Model files: save/load round trip, and clear ModelErrors for missing, damaged or foreign files."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from core.errors import ModelError  # noqa: E402
from core.prediction.model_io import load_model, model_meta, save_model  # noqa: E402
from core.prediction.predict import DosePredictor  # noqa: E402
from core.prediction.preprocess import POOL, channel_names  # noqa: E402
from core.prediction.sites import get_site  # noqa: E402
from core.prediction.unet import CADUNet, UNetConfig  # noqa: E402

SITE = get_site("hn")
TINY = {"base_channels": 4, "growth": 2, "depth": 2, "layers_per_block": 1}


def tiny_model(tmp_path, seed=0, **over):
    torch.manual_seed(seed)
    net = CADUNet(UNetConfig(in_channels=len(channel_names(SITE)), **{**TINY, **over}))
    for p in net.parameters():  # away from the init so a wrong load would show
        p.data += 0.01 * torch.randn_like(p)
    save_model(tmp_path, net, model_meta(net, SITE, channel_names(SITE), POOL))
    return net.eval()


def test_round_trip_gives_identical_predictions(tmp_path):
    net = tiny_model(tmp_path)
    loaded, meta = load_model(tmp_path, site="hn")
    x = torch.randn(1, 11, 4, 6, 8)
    with torch.no_grad():
        assert torch.equal(net(x), loaded(x))
    assert meta["site"] == "hn" and meta["unet"]["base_channels"] == 4
    assert (tmp_path / "config.json").is_file()


def test_predictor_round_trip_on_a_patient(tmp_path):
    from .test_preprocess import dicom_patient

    tiny_model(tmp_path / "m")
    p = dicom_patient()
    r1 = DosePredictor(tmp_path / "m", "cpu").predict(p)
    # save the loaded model again and predict with the copy: bit-identical dose
    pred = DosePredictor(tmp_path / "m", "cpu")
    save_model(tmp_path / "m2", pred.net, pred.meta)
    r2 = DosePredictor(tmp_path / "m2", "cpu").predict(p)
    assert r1.dose.dose_gy.shape == p.grid.shape and r1.dose.grid is p.grid
    np.testing.assert_array_equal(r1.dose.dose_gy, r2.dose.dose_gy)
    assert np.all(r1.dose.dose_gy[~p.external_mask()] == 0)
    assert r1.unknown_structures == ["Lens_L"]
    assert set(r1.timings_s) >= {"preprocess", "network", "postprocess", "total"}


def test_ensemble_members_are_averaged(tmp_path):
    from .test_preprocess import dicom_patient

    tiny_model(tmp_path / "a", seed=1)
    b = tiny_model(tmp_path / "b", seed=2)
    p = dicom_patient()
    x = torch.randn(11, 8, 8, 8).numpy()
    alone = DosePredictor(tmp_path / "a", "cpu")
    pair = DosePredictor(tmp_path / "a", "cpu", extra_members=[tmp_path / "b"])
    other = DosePredictor(tmp_path / "b", "cpu")
    np.testing.assert_allclose(pair._forward(x, False), 0.5 * (alone._forward(x, False) + other._forward(x, False)),
                               rtol=1e-5, atol=1e-5)
    assert pair.describe()["members"] == 2
    # a member stored beside model.pt (as an install writes it) is found without being named,
    # and the folder's config.json still describes model.pt
    config = (tmp_path / "a" / "config.json").read_text()
    save_model(tmp_path / "a" / "model_2.pt", b, model_meta(b, SITE, channel_names(SITE), POOL), write_config=False)
    assert (tmp_path / "a" / "config.json").read_text() == config
    beside = DosePredictor(tmp_path / "a", "cpu")
    assert beside.describe()["members"] == 2
    np.testing.assert_array_equal(beside.predict(p).dose.dose_gy, pair.predict(p).dose.dose_gy)


def test_test_time_framings_average_the_patient_placed_at_offsets_in_a_larger_box(tmp_path):
    """With tta, ``tta_framings`` n averages the flipped pair at offsets k * multiple / n in
    a box one multiple larger, padded as model inputs are (CT air -1, other channels 0), and
    cropped back; without tta there is one framing whatever the model file says."""
    from core.prediction.predict import _framed

    tiny_model(tmp_path / "a", seed=3)
    pred = DosePredictor(tmp_path / "a", "cpu")
    m = pred.net.config.multiple
    x = torch.randn(11, m, 2 * m, m).numpy()
    big = _framed(x, m // 2, m)
    assert big.shape == (11, 2 * m, 3 * m, 2 * m)
    np.testing.assert_array_equal(big[:, m // 2:m // 2 + m, m // 2:m // 2 + 2 * m, m // 2:m // 2 + m], x)
    assert (big[0, 0] == -1).all() and (big[1:, 0] == 0).all()
    one = pred._forward(x, True)
    shifted = pred._forward_framed(big, True)[m // 2:m // 2 + m, m // 2:m // 2 + 2 * m, m // 2:m // 2 + m]
    assert not np.allclose(one, shifted)        # instance norm: another placement, another opinion
    pred.tta_framings = 2
    np.testing.assert_allclose(pred._forward(x, True), 0.5 * (one + shifted), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(pred._forward(x, False), pred._forward_framed(x, False))


def test_an_ensemble_member_with_other_inputs_is_refused(tmp_path):
    tiny_model(tmp_path / "a")
    net = tiny_model(tmp_path / "c", seed=3)
    meta = model_meta(net, SITE, channel_names(SITE), 1)   # full resolution: another input grid
    save_model(tmp_path / "c", net, meta)
    with pytest.raises(ModelError, match="ensemble member"):
        DosePredictor(tmp_path / "a", "cpu", extra_members=[tmp_path / "c"])


def test_missing_file(tmp_path):
    with pytest.raises(ModelError, match="no trained model"):
        load_model(tmp_path / "nowhere")


def test_corrupt_and_truncated_files(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"not a model at all")
    with pytest.raises(ModelError, match="damaged"):
        load_model(tmp_path)
    d = tmp_path / "t"
    tiny_model(d)
    data = (d / "model.pt").read_bytes()
    (d / "model.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="damaged"):
        load_model(d)


def test_weights_of_another_architecture(tmp_path):
    tiny_model(tmp_path / "a", base_channels=6)
    blob = torch.load(tmp_path / "a" / "model.pt", weights_only=True)
    blob["unet"]["base_channels"] = 4  # declared network differs from the stored weights
    torch.save(blob, tmp_path / "a" / "model.pt")
    with pytest.raises(ModelError, match="do not fit"):
        load_model(tmp_path / "a")
    blob["arch"] = "resnet"
    torch.save(blob, tmp_path / "a" / "model.pt")
    with pytest.raises(ModelError, match="architecture"):
        load_model(tmp_path / "a")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "a" / "model.pt")
    with pytest.raises(ModelError, match="not an OpenATP"):
        load_model(tmp_path / "a")


def test_model_of_another_site(tmp_path):
    tiny_model(tmp_path)
    with pytest.raises(ModelError, match="site 'hn'"):
        load_model(tmp_path, site="prostate")
