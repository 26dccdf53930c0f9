"""CT number (HU) to relative electron density (water = 1).

The default table is pyRadPlan 0.5.0's ``default_hlut()`` (BSD-3-Clause, DKFZ), the one
the TG-119 reference dose was computed with (``hlut_hu_to_red`` in
``tg119/pyradplan_reference.npz``), so that both engines see the same densities.
"""

from __future__ import annotations

import numpy as np

from core.errors import InputError

DEFAULT_HLUT = np.array([
    [-1024.0, 0.001],
    [-999.0, 0.001],
    [-90.0, 0.95],
    [-45.0, 0.99],
    [0.0, 1.0],
    [100.0, 1.095],
    [350.0, 1.199],
    [3000.0, 2.505],
])


def hu_to_red(hu: np.ndarray, table: np.ndarray | None = None) -> np.ndarray:
    """Relative electron density (float32) of ``hu`` by linear interpolation in ``table``.

    Values beyond the table ends take the end values (CT numbers above 3000 HU are metal
    or artefacts; clamping keeps one voxel from dominating a radiological depth).
    """
    t = DEFAULT_HLUT if table is None else np.asarray(table, dtype=float)
    if t.ndim != 2 or t.shape[1] != 2 or np.any(np.diff(t[:, 0]) <= 0) or np.any(t[:, 1] < 0):
        raise InputError("the HU to density table needs increasing HU values and non-negative densities")
    return np.interp(np.asarray(hu, dtype=np.float32), t[:, 0], t[:, 1]).astype(np.float32)
