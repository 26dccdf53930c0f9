"""A small synthetic 2D IMRT problem (no dose engine): a C-shaped target around a core.

Geometry: one slice of ``n x n`` voxels of ``spacing`` mm in a water disk. Each beam
(gantry angle, coplanar) is cut into 5 mm beamlets; a beamlet's dose is
``exp(-mu * depth) * exp(-(s - s_j)^2 / (2 sigma^2))`` with ``s`` the lateral distance
from the beamlet's central axis -- the textbook shape of a photon pencil beam, enough
to give the optimizer a realistic trade-off (beams that cover the target also hit the core).
"""

from __future__ import annotations

import numpy as np

from core.dose.influence import DoseInfluence
from core.geometry import Grid


def c_shape(n: int = 48, spacing: float = 3.0):
    grid = Grid((1, n, n), (spacing, spacing, spacing), (0.0, 0.0, 0.0))
    c = (n - 1) / 2.0
    yy, xx = np.mgrid[0:n, 0:n]
    r = np.hypot(yy - c, xx - c) * spacing
    body = r <= 0.48 * n * spacing
    core = r <= 15.0
    ring = (r >= 24.0) & (r <= 45.0)
    target = ring & ~((xx > c) & (np.abs(yy - c) * spacing <= 12.0))   # opening of the C toward +x
    m = lambda a: a[None]  # noqa: E731
    return grid, {"Target": m(target), "Core": m(core & ~target), "Body": m(body)}


def toy_dij(grid: Grid, body: np.ndarray, n_beams: int = 7, mu_per_mm: float = 0.005,
            sigma_mm: float = 3.5, beamlet_mm: float = 5.0, cutoff: float = 1e-3) -> DoseInfluence:
    import scipy.sparse as sp
    import torch

    n = grid.shape[1]
    sp_mm = grid.spacing_mm[1]
    c = (n - 1) / 2.0
    yy, xx = np.mgrid[0:n, 0:n]
    y = (yy - c) * sp_mm
    x = (xx - c) * sp_mm
    vox = np.flatnonzero(body.reshape(-1))
    yv, xv = y.reshape(-1)[vox], x.reshape(-1)[vox]
    radius = 0.48 * n * sp_mm
    cols, beam_of, pos = [], [], []
    for b in range(n_beams):
        th = 2 * np.pi * b / n_beams
        u = np.array([np.cos(th), np.sin(th)])          # beam direction (y, x)
        v = np.array([-np.sin(th), np.cos(th)])         # lateral
        along = yv * u[0] + xv * u[1]
        lat = yv * v[0] + xv * v[1]
        entry = -np.sqrt(np.clip(radius ** 2 - lat ** 2, 0, None))
        depth = np.clip(along - entry, 0, None)
        att = np.exp(-mu_per_mm * depth)
        for s in np.arange(-radius, radius + 1e-6, beamlet_mm):
            d = att * np.exp(-(lat - s) ** 2 / (2 * sigma_mm ** 2)) * 0.01
            d[d < cutoff * 0.01] = 0
            cols.append(sp.csc_matrix(d.astype(np.float32).reshape(-1, 1)))
            beam_of.append(b)
            pos.append((s, 0.0))
    A = sp.hstack(cols).tocsr()
    A.sort_indices()
    mat = torch.sparse_csr_tensor(torch.from_numpy(A.indptr.astype(np.int64)),
                                  torch.from_numpy(A.indices.astype(np.int64)),
                                  torch.from_numpy(A.data), size=A.shape)
    return DoseInfluence(matrix=mat, voxel_index=vox.astype(np.int64), grid=grid,
                         beamlet_beam=np.asarray(beam_of), beamlet_pos_mm=np.asarray(pos),
                         beamlet_size_mm=(beamlet_mm, beamlet_mm))
