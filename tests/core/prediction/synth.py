"""Small synthetic head-and-neck-like cases for the prediction tests (no data set needed)."""

from __future__ import annotations

import numpy as np


def sphere(shape, centre, radius_vox):
    g = np.indices(shape, dtype=float)
    return sum((g[k] - centre[k]) ** 2 for k in range(3)) <= radius_vox ** 2


def openkbp_arrays(shape=(32, 32, 32), with_ptv=True, seed=0, spacing=(3.906, 3.906, 2.5)) -> dict:
    """Arrays in the OpenKBP npz format: body cylinder, PTV70 sphere, parotids, cord; a
    dose falling off with distance from the PTV."""
    rng = np.random.default_rng(seed)
    a0, a1, a2 = shape
    g = np.indices(shape, dtype=float)
    body = ((g[0] - a0 / 2) ** 2 / (0.4 * a0) ** 2 + (g[1] - a1 / 2) ** 2 / (0.42 * a1) ** 2) <= 1.0
    body[:, :, :2] = False
    c = np.array([a0 * 0.45, a1 * 0.5, a2 * 0.5]) + rng.uniform(-1, 1, 3)
    ptv = sphere(shape, c, a0 * 0.15) & body
    names = ["Brainstem", "SpinalCord", "RightParotid", "LeftParotid", "Esophagus", "Larynx", "Mandible",
             "PTV56", "PTV63", "PTV70"]
    masks = np.zeros(shape, np.uint16)
    cord = sphere(shape, (a0 * 0.75, a1 * 0.5, a2 * 0.5), a0 * 0.06) & body
    rp = sphere(shape, (a0 * 0.45, a1 * 0.22, a2 * 0.6), a0 * 0.08) & body
    lp = sphere(shape, (a0 * 0.45, a1 * 0.78, a2 * 0.6), a0 * 0.08) & body
    masks |= cord.astype(np.uint16) << 1
    masks |= rp.astype(np.uint16) << 2
    masks |= lp.astype(np.uint16) << 3
    if with_ptv:
        masks |= ptv.astype(np.uint16) << 9
    from scipy.ndimage import distance_transform_edt
    d = distance_transform_edt(~ptv, sampling=spacing) if ptv.any() else np.full(shape, 50.0)
    dose = np.where(body, 70.0 * np.exp(-d / 30.0), 0.0)
    ct = np.where(body, 1000 + rng.normal(0, 20, shape), 0).clip(0).astype(np.int16)
    return {"ct": ct, "dose_cgy": np.round(dose * 100).astype(np.uint16), "masks": masks,
            "possible_dose_mask": body, "roi_names": np.array(names),
            "voxel_dimensions_mm": np.array(spacing, np.float32)}


def write_case(path, **kw):
    np.savez_compressed(path, **openkbp_arrays(**kw))
    return path
