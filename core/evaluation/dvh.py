"""Dose-volume histograms and DVH endpoints.

Conventions (shared with OpenKBP's evaluation code, Babier et al., Med. Phys. 48:5549,
2021, ``provided_code/dose_evaluation_class.py``; endpoint names as ICRU Report 83, 2010):

* A structure is the set of voxels whose centre lies in its mask; each voxel carries the
  dose at its centre and the volume of one voxel (no partial-volume weighting).
* ``Dx`` (x in %) is the minimum dose received by the hottest x % of the volume, computed
  as ``np.percentile(doses, 100 - x)`` with numpy's default linear interpolation between
  sorted voxel doses. D2 is the near-maximum, D98 the near-minimum, D50 the median.
* ``Dv cc`` is the minimum dose to the hottest v cc: ``n_v = max(1, round(v / voxel_cc))``
  voxels and ``np.percentile(doses, 100 - 100 * n_v / n)`` (OpenKBP's D0.1cc definition).
  A structure holding fewer than ``n_v`` voxels (smaller than v cc) reports its **maximum**
  dose (the near-maximum of a structure smaller than the near-max volume is its maximum;
  OpenKBP's formula is undefined there). A structure of exactly ``n_v`` voxels gets the
  formula's value, its minimum dose, as in OpenKBP.
* ``Vd`` is the volume receiving **at least** d Gy.
* An empty structure (no voxels) has NaN endpoints and ``volume_cc`` 0; :func:`dvh_endpoints`
  appends a warning to its ``warnings`` list.
"""

from __future__ import annotations

import numpy as np

from core.geometry import Grid

#: The endpoints of ``openatp dvh`` (docs/cli.md), in output order.
ENDPOINT_KEYS = ("volume_cc", "mean", "max", "min", "D0.03cc", "D0.1cc", "D1", "D2", "D5", "D50",
                 "D95", "D98", "D99")


def structure_doses(dose_gy: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(n,) float64 doses of the voxels in ``mask`` (Gy), in C order."""
    dose_gy = np.asarray(dose_gy)
    mask = np.asarray(mask, dtype=bool)
    if dose_gy.shape != mask.shape:
        from core.errors import GeometryError

        raise GeometryError(f"dose {dose_gy.shape} and structure {mask.shape} are on different grids")
    return dose_gy[mask].astype(np.float64)


def dose_at_volume_pct(values: np.ndarray, pct: float) -> float:
    """Dx%: the minimum dose to the hottest ``pct`` % of the voxels (NaN when empty).

    ``np.percentile(values, 100 - pct)`` with linear interpolation (OpenKBP convention).
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    if not 0.0 <= pct <= 100.0:
        from core.errors import InputError

        raise InputError(f"a volume percentage must lie in 0..100, got {pct}")
    if v.size == 0:
        return float("nan")
    return float(np.percentile(v, 100.0 - pct))


def voxels_in_volume(cc: float, voxel_cc: float) -> int:
    """``max(1, round(cc / voxel_cc))``: how many voxels make up ``cc`` (OpenKBP rounding)."""
    return max(1, int(np.round(cc / voxel_cc)))


def dose_at_volume_cc(values: np.ndarray, cc: float, voxel_cc: float) -> float:
    """D(v cc): the minimum dose to the hottest ``cc`` cm^3 (NaN when empty).

    ``n_v = max(1, round(cc / voxel_cc))`` voxels; ``np.percentile(values, 100 - 100 n_v / n)``;
    the maximum dose when the structure has fewer than ``n_v`` voxels.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        return float("nan")
    n_v = voxels_in_volume(cc, voxel_cc)
    if n_v > v.size:
        return float(v.max())
    return float(np.percentile(v, 100.0 - 100.0 * n_v / v.size))


def volume_at_dose_pct(values: np.ndarray, dose_gy: float) -> float:
    """V(d) in %: share of the voxels receiving at least ``dose_gy`` (NaN when empty)."""
    v = np.asarray(values).ravel()
    if v.size == 0:
        return float("nan")
    return 100.0 * float(np.count_nonzero(v >= dose_gy)) / v.size


def volume_at_dose_cc(values: np.ndarray, dose_gy: float, voxel_cc: float) -> float:
    """V(d) in cm^3: volume receiving at least ``dose_gy``."""
    v = np.asarray(values).ravel()
    return float(np.count_nonzero(v >= dose_gy)) * voxel_cc


def mean_dose(values: np.ndarray) -> float:
    v = np.asarray(values, dtype=np.float64).ravel()
    return float(v.mean()) if v.size else float("nan")


def max_dose(values: np.ndarray) -> float:
    v = np.asarray(values).ravel()
    return float(v.max()) if v.size else float("nan")


def min_dose(values: np.ndarray) -> float:
    v = np.asarray(values).ravel()
    return float(v.min()) if v.size else float("nan")


def near_max_dose(values: np.ndarray, voxel_cc: float) -> float:
    """D0.03cc, the near-point maximum used for serial organs."""
    return dose_at_volume_cc(values, 0.03, voxel_cc)


def cumulative_dvh(dose_gy: np.ndarray, mask: np.ndarray, grid: Grid, bin_gy: float = 0.01):
    """Cumulative DVH of one structure.

    Parameters
    ----------
    dose_gy : (a0, a1, a2) float ndarray, Gy, on ``grid``
    mask : (a0, a1, a2) bool ndarray on ``grid``
    grid : Grid
    bin_gy : float
        Dose step.

    Returns
    -------
    dose_bins_gy : (B,) float64
        ``0, bin_gy, 2 bin_gy, ...`` up to one bin above the maximum dose.
    volume_cc : (B,) float64
        Volume receiving **at least** ``dose_bins_gy[i]``; ``volume_cc[0]`` is the structure volume.
    volume_pct : (B,) float64
        The same in % of the structure volume (all NaN for an empty structure).
    """
    if not np.isfinite(bin_gy) or bin_gy <= 0:
        from core.errors import InputError

        raise InputError(f"DVH bin width must be positive, got {bin_gy} Gy")
    v = structure_doses(dose_gy, mask)
    top = float(v.max()) if v.size else 0.0
    n_bins = int(np.floor(max(top, 0.0) / bin_gy)) + 2
    bins = np.arange(n_bins, dtype=np.float64) * bin_gy
    s = np.sort(v)
    # voxels with dose >= bin edge; a tiny tolerance keeps a voxel at exactly k * bin_gy in bin k
    n_at_least = s.size - np.searchsorted(s, bins - 1e-9 * bin_gy, side="left")
    volume_cc = n_at_least * grid.voxel_volume_cc
    with np.errstate(invalid="ignore", divide="ignore"):
        volume_pct = 100.0 * n_at_least / s.size if s.size else np.full(n_bins, np.nan)
    return bins, volume_cc.astype(np.float64), np.asarray(volume_pct, dtype=np.float64)


def endpoints_from_values(values: np.ndarray, voxel_cc: float) -> dict:
    """The ``openatp dvh`` endpoints of one structure's voxel doses (Gy; ``volume_cc`` in cm^3)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    return {
        "volume_cc": float(v.size * voxel_cc),
        "mean": mean_dose(v),
        "max": max_dose(v),
        "min": min_dose(v),
        "D0.03cc": dose_at_volume_cc(v, 0.03, voxel_cc),
        "D0.1cc": dose_at_volume_cc(v, 0.1, voxel_cc),
        "D1": dose_at_volume_pct(v, 1),
        "D2": dose_at_volume_pct(v, 2),
        "D5": dose_at_volume_pct(v, 5),
        "D50": dose_at_volume_pct(v, 50),
        "D95": dose_at_volume_pct(v, 95),
        "D98": dose_at_volume_pct(v, 98),
        "D99": dose_at_volume_pct(v, 99),
    }


def dvh_endpoints(dose_gy: np.ndarray, mask: np.ndarray, grid: Grid, warnings: list | None = None,
                  name: str = "structure") -> dict:
    """DVH endpoints of one structure, exactly the keys of :data:`ENDPOINT_KEYS`.

    Parameters
    ----------
    dose_gy : (a0, a1, a2) float ndarray, Gy, on ``grid``
    mask : (a0, a1, a2) bool ndarray on ``grid``
    grid : Grid
    warnings : list, optional
        Gets a message when the structure is empty (endpoints NaN) or smaller than 0.1 cc
        (D0.1cc is then its maximum dose).
    name : str
        Used in the warning text.
    """
    v = structure_doses(dose_gy, mask)
    voxel_cc = grid.voxel_volume_cc
    if warnings is not None:
        if v.size == 0:
            warnings.append(f"structure '{name}' is empty: its DVH endpoints are undefined")
        elif v.size < voxels_in_volume(0.1, voxel_cc):
            warnings.append(f"structure '{name}' is smaller than 0.1 cc: D0.1cc is its maximum dose")
    return endpoints_from_values(v, voxel_cc)
