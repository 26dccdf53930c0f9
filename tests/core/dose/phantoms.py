"""Small synthetic phantoms for the dose-engine tests (built in code, no data files)."""

from __future__ import annotations

import numpy as np

from core.geometry import Grid
from core.patient import CtImage, Patient, Structure, StructureRole


def water_box(size_mm=(300.0, 300.0, 300.0), spacing_mm=(3.0, 3.0, 3.0), hu_fn=None, target=None) -> Patient:
    """A water box centred at LPS (0, 0, 0) on a DICOM-ordered grid (z, y, x).

    ``hu_fn(x, y, z) -> HU`` overrides water (0 HU) e.g. for a lung slab; ``target`` =
    (centre_xyz_mm, half_size_xyz_mm) adds a box TARGET named "PTV".
    """
    sz, sy, sx = spacing_mm[0], spacing_mm[1], spacing_mm[2]
    shape = tuple(int(round(s / d)) for s, d in zip((size_mm[2], size_mm[1], size_mm[0]), (sz, sy, sx)))
    origin = tuple(-(n - 1) * d / 2 for n, d in zip(shape, (sz, sy, sx)))
    grid = Grid(shape, (sz, sy, sx), origin)
    z = grid.axis_coords_mm(0)[:, None, None]
    y = grid.axis_coords_mm(1)[None, :, None]
    x = grid.axis_coords_mm(2)[None, None, :]
    hu = (np.zeros(shape, dtype=np.float32) if hu_fn is None
          else np.broadcast_to(hu_fn(x, y, z), shape).astype(np.float32))
    p = Patient("water", grid, ct=CtImage(hu, grid))
    p.add_structure(Structure("BODY", np.ones(shape, bool), StructureRole.EXTERNAL))
    if target is not None:
        c, hs = np.asarray(target[0]), np.asarray(target[1])
        m = (np.abs(x - c[0]) <= hs[0]) & (np.abs(y - c[1]) <= hs[1]) & (np.abs(z - c[2]) <= hs[2])
        p.add_structure(Structure("PTV", np.broadcast_to(m, shape).copy(), StructureRole.TARGET))
    return p


def axis_values(dose: np.ndarray, grid: Grid, x=0.0, z=0.0):
    """Dose along y (the gantry-0 beam axis) at LPS (x, z), trilinear between voxel
    centres: (y_mm of the voxel centres, dose)."""
    from scipy.ndimage import map_coordinates

    y = grid.axis_coords_mm(1)
    pts = np.stack([np.full_like(y, x), y, np.full_like(y, z)], 1)
    return y, map_coordinates(dose, grid.patient_to_index(pts).T, order=1)
