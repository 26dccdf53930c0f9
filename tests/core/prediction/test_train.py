"""Training: a step lowers the loss; augmentation keeps inputs and targets aligned; the
cache round trip; a tiny end-to-end run is deterministic and resumable."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from core.prediction.cache import build_cache, load_cache  # noqa: E402
from core.prediction.sites import get_site  # noqa: E402
from core.prediction.train import (TrainConfig, augment_sample, loss_weights, prepare_train_case,  # noqa: E402
                                   train, train_step, weighted_l1, weighted_mse)
from core.prediction.unet import CADUNet, UNetConfig  # noqa: E402

from .synth import openkbp_arrays, write_case  # noqa: E402

SITE = get_site("hn")
TINY = {"base_channels": 4, "growth": 2, "depth": 2, "layers_per_block": 1}


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    d = tmp_path_factory.mktemp("okbp")
    for split, seeds in (("train", (1, 2, 3)), ("validation", (4,))):
        (d / split).mkdir()
        for s in seeds:
            write_case(d / split / f"pt_{s}.npz", shape=(24, 24, 20), seed=s)
    build_cache(d / "train", d / "tr.npz")
    build_cache(d / "validation", d / "va.npz")
    return d


def test_cache_round_trip_matches_the_source(caches):
    a = openkbp_arrays(shape=(24, 24, 20), seed=1)
    c = load_cache(caches / "tr.npz")[0]
    sl = tuple(slice(int(lo), int(lo) + s) for lo, s in zip(c.crop_lo, c.body.shape))
    assert c.pid == "pt_1" and tuple(c.full_shape) == (24, 24, 20)
    np.testing.assert_array_equal(c.body, a["possible_dose_mask"][sl])
    assert a["possible_dose_mask"][sl].sum() == a["possible_dose_mask"].sum()  # crop keeps the whole body
    # dose stored in 5 cGy steps: at most 2.5 cGy off
    assert np.abs(c.dose_gy - a["dose_cgy"][sl] / 100.0).max() <= 0.025 + 1e-6
    np.testing.assert_array_equal(c.mask(9), ((a["masks"] >> 9) & 1).astype(bool)[sl])
    # CT in 10 HU steps inside the body
    ct_hu = a["ct"].astype(float)[sl] - 1000
    assert np.abs(c.ct_hu[c.body] - ct_hu[c.body]).max() <= 5.0


@pytest.mark.parametrize("loss_fn", [weighted_mse, weighted_l1])
def test_one_training_step_lowers_the_loss(loss_fn):
    torch.manual_seed(0)
    net = CADUNet(UNetConfig(in_channels=11, **TINY))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x = torch.randn(2, 11, 8, 8, 8)
    y = torch.sigmoid(x[:, 9:10])  # a target the inputs determine
    w = torch.ones_like(y)
    before = train_step(net, opt, x, y, w, loss_fn)
    with torch.no_grad():
        after = float(loss_fn(net(x), y, w))
    assert after < before


def test_weighted_l1_is_the_weighted_mean_absolute_error():
    pred = torch.tensor([1.0, 2.0, 4.0])
    y = torch.tensor([1.5, 2.0, 1.0])
    w = torch.tensor([2.0, 1.0, 1.0])
    assert float(weighted_l1(pred, y, w)) == pytest.approx((2 * 0.5 + 0 + 3.0) / 4.0)


def test_loss_weights_give_each_structure_its_share():
    body = np.ones((10, 10, 10), np.float32)
    occ = np.zeros((2, 10, 10, 10), np.float32)
    occ[0, :1] = 1   # 10 % of the body
    occ[1, 5:] = 1  # 50 %, disjoint from the first
    w = loss_weights(occ, body, alpha=1.0)
    # total weight: body 1000 + alpha * (body volume) = 2000, split equally between the two structures
    assert w.sum() == pytest.approx(2000.0)
    assert (w * occ[0]).sum() - occ[0].sum() == pytest.approx(500.0, rel=1e-4)


def test_augmentation_keeps_targets_on_inputs(caches):
    c = prepare_train_case(load_cache(caches / "tr.npz")[0], SITE)
    cfg = TrainConfig(max_rot_deg=10, max_scale=0.1)
    for s in range(3):
        x, y, w = augment_sample(c["x"], c["y"], c["occ"], np.random.default_rng(s), SITE, cfg, 4)
        assert all(n % 4 == 0 for n in x.shape[2:]) and x.shape[2:] == y.shape[2:] == w.shape[2:]
        ptv = x[0, 9] > 0.99
        # synthetic dose is 70 Gy (y = 1) throughout the PTV; interpolation at the edge only
        assert float(y[0, 0][ptv].mean()) > 0.95
        # parotids stay on their side: right parotid at lower array axis 1 (patient right)
        rp = torch.nonzero(x[0, 2 + 2] > 0.5).float().mean(0)[1]
        lp = torch.nonzero(x[0, 2 + 3] > 0.5).float().mean(0)[1]
        assert rp < lp


def test_tiny_training_run_is_deterministic_and_resumable(caches, tmp_path):
    cfg = dict(epochs=2, n_val=1, seed=3, unet=TINY, threads=1)
    r1 = train(caches / "tr.npz", caches / "va.npz", tmp_path / "a", TrainConfig(**cfg))
    assert (tmp_path / "a" / "model.pt").is_file() and r1["epochs"] == 2
    # the same run, stopped after one epoch and resumed, ends with the same weights
    from core.errors import Cancelled
    from core.progress import CancelToken, Progress

    token = CancelToken()

    def stop_in_epoch_2(ev):
        if ev.message.startswith("epoch 2"):
            token.cancel()

    with pytest.raises(Cancelled):
        train(caches / "tr.npz", caches / "va.npz", tmp_path / "b", TrainConfig(**cfg),
              progress=Progress(stop_in_epoch_2), cancel=token)
    assert len((tmp_path / "b" / "train_log.jsonl").read_text().splitlines()) == 1
    train(caches / "tr.npz", caches / "va.npz", tmp_path / "b", TrainConfig(**cfg), resume=True)
    la = [json.loads(s) for s in (tmp_path / "a" / "train_log.jsonl").read_text().splitlines()]
    lb = [json.loads(s) for s in (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()]
    assert la[-1]["train_loss"] == pytest.approx(lb[-1]["train_loss"], rel=1e-6)
    assert la[-1]["dose_score_gy"] == pytest.approx(lb[-1]["dose_score_gy"], rel=1e-6)


def test_extending_a_finished_run_adds_epochs_with_a_warm_restart(caches, tmp_path):
    from core.prediction.train import _lr_at

    cfg = TrainConfig(epochs=1, n_val=1, seed=1, unet=TINY, threads=1)
    train(caches / "tr.npz", caches / "va.npz", tmp_path, cfg)
    r = train(caches / "tr.npz", caches / "va.npz", tmp_path, cfg, resume=True, extend_epochs=1, extend_lr=2e-4)
    assert r["epochs"] == 2
    ck = torch.load(tmp_path / "checkpoint_last.pt", weights_only=False)
    assert ck["phases"] == [[0, 3, 3e-4], [3, 6, 2e-4]]  # 3 training cases an epoch
    assert _lr_at(3, 6, cfg, ck["phases"]) == pytest.approx(2e-4)
    assert _lr_at(2, 6, cfg, ck["phases"]) < 1e-4  # the first phase was decaying


def test_a_resumed_run_can_switch_to_the_l1_loss(caches, tmp_path):
    cfg = TrainConfig(epochs=1, n_val=1, seed=1, unet=TINY, threads=1)
    train(caches / "tr.npz", caches / "va.npz", tmp_path, cfg)
    train(caches / "tr.npz", caches / "va.npz", tmp_path, cfg, resume=True, extend_epochs=1, loss="l1")
    ck = torch.load(tmp_path / "checkpoint_last.pt", weights_only=False)
    assert ck["cfg"]["loss"] == "l1"
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in log] == ["mse", "l1"]


def test_a_resumed_run_can_change_the_structure_weight(caches, tmp_path):
    cfg = TrainConfig(epochs=1, n_val=1, seed=1, unet=TINY, threads=1, loss="l1")
    train(caches / "tr.npz", caches / "va.npz", tmp_path, cfg)
    train(caches / "tr.npz", caches / "va.npz", tmp_path, cfg, resume=True, extend_epochs=1, alpha=0.0)
    ck = torch.load(tmp_path / "checkpoint_last.pt", weights_only=False)
    assert ck["cfg"]["alpha"] == 0.0
    from core.errors import InputError

    with pytest.raises(InputError):
        train(caches / "tr.npz", caches / "va.npz", tmp_path, cfg, resume=True, extend_epochs=1, alpha=-1.0)
    with pytest.raises(InputError):
        train(caches / "tr.npz", caches / "va.npz", tmp_path / "new", TrainConfig(**{**asdict(cfg), "alpha": -1.0}))


def test_without_structure_weight_the_loss_weighs_every_body_voxel_alike():
    body = np.zeros((4, 4, 4), np.float32)
    body[1:3] = 1
    occ = np.zeros((2, 4, 4, 4), np.float32)
    occ[0, 1, 1, 1] = 1
    np.testing.assert_array_equal(loss_weights(occ, body, 0.0), body)
    assert loss_weights(occ, body, 1.0)[1, 1, 1] > 1.0


def test_snapshots_average_into_a_model_with_the_mean_weights(caches, tmp_path):
    from core.errors import InputError
    from core.prediction.average import average_models, main as average_main
    from core.prediction.model_io import load_model

    cfg = TrainConfig(epochs=2, n_val=1, seed=2, unet=TINY, threads=1)
    train(caches / "tr.npz", caches / "va.npz", tmp_path / "run", cfg, snapshots=True)
    snaps = sorted((tmp_path / "run" / "snapshots").glob("epoch_*.pt"))
    assert [p.name for p in snaps] == ["epoch_001.pt", "epoch_002.pt"]
    target = average_models(snaps, tmp_path / "avg")
    net, meta = load_model(target)
    (n1, _), (n2, _) = load_model(snaps[0]), load_model(snaps[1])
    for name, w in net.state_dict().items():
        np.testing.assert_allclose(w.numpy(), (n1.state_dict()[name].numpy() + n2.state_dict()[name].numpy()) / 2,
                                   rtol=1e-6, atol=1e-7)
    assert meta["info"]["averaged_epochs"] == [1, 2]
    # a resumed run keeps its snapshots without being told again
    train(caches / "tr.npz", caches / "va.npz", tmp_path / "run", cfg, resume=True, extend_epochs=1)
    assert (tmp_path / "run" / "snapshots" / "epoch_003.pt").is_file()
    # a network of another shape is not a snapshot of this run
    other = TrainConfig(epochs=1, n_val=1, seed=2, unet={**TINY, "base_channels": 6}, threads=1)
    train(caches / "tr.npz", caches / "va.npz", tmp_path / "other", other)
    with pytest.raises(InputError):
        average_models([snaps[0], tmp_path / "other" / "model.pt"], tmp_path / "bad")
    assert not (tmp_path / "bad" / "model.pt").exists()
    assert average_main([str(tmp_path / "bad"), str(snaps[0]), str(tmp_path / "other" / "model.pt")]) == 2


def test_a_new_run_can_start_from_a_trained_model(caches, tmp_path):
    from core.errors import ModelError
    from core.prediction.model_io import load_model

    base = TrainConfig(epochs=1, n_val=1, seed=4, unet=TINY, threads=1, loss="l1")
    train(caches / "tr.npz", caches / "va.npz", tmp_path / "first", TrainConfig(**{**asdict(base), "seed": 5}))
    src, _ = load_model(tmp_path / "first" / "model.pt")
    # at a vanishing learning rate the branched run ends where its start model was, while a
    # run from scratch with the same seed does not: the weights were copied, not re-drawn
    still = {**asdict(base), "lr": 1e-12, "lr_min": 1e-12}
    train(caches / "tr.npz", caches / "va.npz", tmp_path / "branch", TrainConfig(
        **{**still, "init_from": str(tmp_path / "first" / "model.pt")}))
    train(caches / "tr.npz", caches / "va.npz", tmp_path / "scratch", TrainConfig(**still))
    branch, meta = load_model(tmp_path / "branch" / "model.pt")
    scratch, _ = load_model(tmp_path / "scratch" / "model.pt")
    for name, w in src.state_dict().items():
        np.testing.assert_allclose(branch.state_dict()[name].numpy(), w.numpy(), rtol=0, atol=1e-6)
    assert any(not np.allclose(scratch.state_dict()[k].numpy(), w.numpy(), atol=1e-3)
               for k, w in src.state_dict().items())
    assert meta["info"]["train_config"]["init_from"] == str(tmp_path / "first" / "model.pt")
    with pytest.raises(ModelError):
        train(caches / "tr.npz", caches / "va.npz", tmp_path / "wide", TrainConfig(
            **{**still, "unet": {**TINY, "base_channels": 6}, "init_from": str(tmp_path / "first" / "model.pt")}))
    assert not (tmp_path / "wide" / "model.pt").exists()


def test_openatp_train_refuses_contradictory_start_options(tmp_path, capsys):
    from app.cli import main

    base = ["train", "--site", "hn", "--data", str(tmp_path), "--out", str(tmp_path / "run")]
    assert main(base + ["--init-model", str(tmp_path / "none.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "m.pt").write_bytes(b"")
    assert main(base + ["--init-model", str(tmp_path / "m.pt"), "--resume"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(base + ["--init-model", str(tmp_path / "m.pt"), "--stage", "refiner"]) == 2
    assert "--init-refiner" in capsys.readouterr().err
    assert main(base + ["--lr", "0"]) == 2
    assert "--lr" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
