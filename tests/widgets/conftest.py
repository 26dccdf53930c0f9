"""Fixtures for widget tests: small synthetic phantoms with known geometry and values."""

from __future__ import annotations

import numpy as np
import pytest

import widgets  # noqa: F401  (PySide6 reference-count work-around before any Qt use)
from core.geometry import DICOM_AXES, Grid


def make_phantom(shape=(24, 40, 48), spacing=(3.0, 2.0, 2.5), axes=DICOM_AXES):
    """A water cylinder (0 HU) in air (-1000 HU), a bone block (+1000 HU) at patient left,
    a spherical 'PTV' and a dose falling off linearly with distance from its centre.

    Everything is built from patient coordinates, so the same phantom exists for any
    array axis order.
    """
    grid = Grid(shape, spacing, (0.0, 0.0, 0.0), axes)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    xyz = grid.index_to_patient(idx).reshape(*shape, 3)
    b = grid.bounds_mm()
    centre = b.mean(axis=1)
    half = (b[:, 1] - b[:, 0]) / 2.0
    x, y, z = (xyz[..., k] - centre[k] for k in range(3))
    hu = np.full(shape, -1000, np.int16)
    body = (x / (0.8 * half[0])) ** 2 + (y / (0.8 * half[1])) ** 2 <= 1.0
    hu[body] = 0
    bone = body & (x > 0.4 * half[0]) & (np.abs(y) < 0.2 * half[1])
    hu[bone] = 1000
    r = np.sqrt(x ** 2 + y ** 2 + z ** 2)
    ptv = r <= 0.35 * min(half[0], half[1])
    dose = np.clip(60.0 * (1.0 - r / (1.2 * min(half[0], half[1]))), 0.0, None).astype(np.float32)
    return grid, hu, {"PTV": ptv, "Bone": bone, "Body": body}, dose, xyz


@pytest.fixture
def phantom():
    return make_phantom()
