"""``openatp predict``: DOSE output and JSON, and exit 2 with one line for bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")

from app.cli import main  # noqa: E402

from .synth import openkbp_arrays  # noqa: E402
from .test_model_io import tiny_model  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    tiny_model(d / "model")
    a = openkbp_arrays()
    # an extra structure the hn model does not know
    a["roi_names"] = np.array(list(a["roi_names"]) + ["Lens_L"])
    a["masks"] = a["masks"] | (((np.indices(a["ct"].shape)[0] == 10) & a["possible_dose_mask"]).astype(np.uint16) << 10)
    np.savez_compressed(d / "pt_1.npz", **a)
    b = openkbp_arrays(with_ptv=False)
    np.savez_compressed(d / "pt_2.npz", **b)
    return d


def test_predict_writes_a_dose_file_and_json(files, capsys):
    out = files / "dose.npz"
    rc = main(["predict", str(files / "pt_1.npz"), "--site", "hn", "--out", str(out), "--model",
               str(files / "model"), "--device", "cpu", "--json", "--tta"])
    cap = capsys.readouterr()
    assert rc == 0
    doc = json.loads(cap.out)
    assert set(doc) >= {"timings_s", "device", "model"} and doc["device"] == "cpu"
    assert doc["unknown_structures"] == ["Lens_L"] and "Lens_L" in cap.err
    with np.load(out) as d:
        assert d["dose_gy"].shape == (32, 32, 32) and d["dose_gy"].dtype == np.float32
        assert d["spacing_mm"].shape == (3,) and d["origin_mm"].shape == (3,)


@pytest.mark.parametrize("extra,needle", [
    (["--site", "prostate"], "unknown site"),
    (["--site", "hn", "--model", "/nonexistent/model"], "no trained model"),
])
def test_bad_site_or_model_exit_2(files, capsys, extra, needle):
    rc = main(["predict", str(files / "pt_1.npz"), "--out", str(files / "x.npz"), *extra])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1


def test_patient_without_target_exit_2(files, capsys):
    rc = main(["predict", str(files / "pt_2.npz"), "--site", "hn", "--out", str(files / "y.npz"),
               "--model", str(files / "model")])
    err = capsys.readouterr().err
    assert rc == 2 and "no target" in err


def test_corrupt_weights_exit_2(files, capsys, tmp_path):
    (tmp_path / "model.pt").write_bytes(b"\x00" * 100)
    rc = main(["predict", str(files / "pt_1.npz"), "--site", "hn", "--out", str(tmp_path / "z.npz"),
               "--model", str(tmp_path)])
    assert rc == 2 and "damaged" in capsys.readouterr().err
