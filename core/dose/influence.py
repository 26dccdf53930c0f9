"""Dose-influence matrix (dij): beamlet weights -> dose on a set of voxels.

Contract shared by the dose engine (which builds it) and the optimizer (which uses it):

* ``matrix`` : torch sparse CSR tensor, float32, shape ``(n_voxels, n_beamlets)``,
  Gy per unit beamlet weight. A beamlet weight is in MU: every beamlet of an open field
  at weight 100 delivers that field's 100 MU (so 100 x 100 MU of a 10 x 10 cm field at
  SSD 100 cm gives 1 Gy at dmax in water).
* ``voxel_index`` : (n_voxels,) int64 flat C-order indices into ``grid.shape`` of the
  voxels the matrix covers (inside the external contour).
* ``grid`` : the dose grid (the patient grid, or a coarser one).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from core.geometry import Grid


@dataclass(eq=False)
class DoseInfluence:
    matrix: object  # torch.Tensor, sparse CSR (n_voxels, n_beamlets)
    voxel_index: np.ndarray
    grid: Grid
    beamlet_beam: np.ndarray = None        # (n_beamlets,) int: index of the beam in ``beams``
    beamlet_pos_mm: np.ndarray = None      # (n_beamlets, 2) float: beamlet centre at isocentre plane (BEV x, y)
    beamlet_size_mm: tuple = (5.0, 5.0)
    beams: object = None                   # core.dose.beams.BeamSet
    patient_grid: Grid | None = None       # grid of the patient the dij was computed for
    meta: dict = field(default_factory=dict)

    @property
    def n_voxels(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def n_beamlets(self) -> int:
        return int(self.matrix.shape[1])

    def dose(self, weights):
        """(n_beamlets,) torch weights (MU) -> (n_voxels,) torch dose in Gy, on the matrix's device."""
        return (self.matrix @ weights.reshape(-1, 1)).reshape(-1)

    def dose_on_grid(self, weights) -> np.ndarray:
        """Full dose array (grid.shape, float32 Gy) from weights (numpy or torch)."""
        import torch

        w = torch.as_tensor(np.asarray(weights) if not isinstance(weights, torch.Tensor) else weights,
                            dtype=torch.float32, device=self.matrix.device)
        d = self.dose(w).detach().cpu().numpy()
        out = np.zeros(self.grid.size, dtype=np.float32)
        out[self.voxel_index] = d
        return out.reshape(self.grid.shape)

    def voxel_mask(self, mask_on_dose_grid: np.ndarray) -> np.ndarray:
        """(n_voxels,) bool: which matrix rows lie in a mask given on ``grid``."""
        return np.asarray(mask_on_dose_grid, dtype=bool).reshape(-1)[self.voxel_index]
