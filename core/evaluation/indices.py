"""Plan quality indices and fractionation conversions.

References
----------
* Paddick I. "A simple scoring ratio to index the conformity of radiosurgical treatment
  plans." J Neurosurg 93 (Suppl 3):219-222, 2000. ``CI = TV_PIV^2 / (TV * PIV)``.
* Shaw E. et al. "Radiation Therapy Oncology Group: radiosurgery quality assurance
  guidelines." IJROBP 27:1231-1239, 1993. ``CI_RTOG = PIV / TV``.
* ICRU Report 83, "Prescribing, recording, and reporting photon-beam IMRT", 2010:
  ``HI = (D2 - D98) / D50``.
* Withers H.R., Thames H.D., Peters L.J. "A new isoeffect curve for change in dose per
  fraction." Radiother Oncol 1:187-191, 1983 (EQD2); Fowler J.F. "The linear-quadratic
  formula and progress in fractionated radiotherapy." Br J Radiol 62:679-694, 1989 (BED).
  ``BED = D (1 + d / (alpha/beta))``, ``EQD2 = BED / (1 + 2 / (alpha/beta))``, d = D / n.

TV: target volume; PIV: volume of the prescription isodose (inside the external, all
voxels of the evaluated grid); TV_PIV: target volume inside the prescription isodose.
"""

from __future__ import annotations

import numpy as np

from core.errors import InputError
from core.evaluation.dvh import dose_at_volume_pct, structure_doses

#: Default alpha/beta (Gy) by tissue, for EQD2/BED when no value is given. Tumour / early
#: responding tissue 10 Gy; late-responding normal tissue 3 Gy; spinal cord and brainstem
#: 2 Gy (conservative for CNS late effects); prostate 1.5 Gy (Fowler et al. 2001).
ALPHA_BETA_GY = {
    "tumour": 10.0,
    "early": 10.0,
    "late": 3.0,
    "spinalcord": 2.0,
    "brainstem": 2.0,
    "prostate": 1.5,
}


def default_alpha_beta_gy(structure_name: str, is_target: bool = False) -> float:
    """alpha/beta (Gy) for a structure by name: targets 10, cord/brainstem 2, other OARs 3."""
    if is_target:
        return ALPHA_BETA_GY["tumour"]
    key = "".join(ch for ch in structure_name.lower() if ch.isalnum())
    if "cord" in key:
        return ALPHA_BETA_GY["spinalcord"]
    if "brainstem" in key:
        return ALPHA_BETA_GY["brainstem"]
    return ALPHA_BETA_GY["late"]


def _volumes(dose_gy, target_mask, prescription_gy, body_mask):
    if not np.isfinite(prescription_gy) or prescription_gy <= 0:
        raise InputError(f"prescription dose must be positive, got {prescription_gy} Gy")
    dose = np.asarray(dose_gy)
    target = np.asarray(target_mask, dtype=bool)
    if dose.shape != target.shape:
        raise InputError(f"dose {dose.shape} and target {target.shape} are on different grids")
    piv_mask = dose >= prescription_gy
    if body_mask is not None:
        piv_mask &= np.asarray(body_mask, dtype=bool)
    tv = int(np.count_nonzero(target))
    piv = int(np.count_nonzero(piv_mask))
    tv_piv = int(np.count_nonzero(piv_mask & target))
    return tv, piv, tv_piv


def conformity_paddick(dose_gy, target_mask, prescription_gy: float, body_mask=None) -> float:
    """Paddick conformity index ``TV_PIV^2 / (TV x PIV)`` in [0, 1]; 1 is perfect.

    NaN when the target is empty or no voxel reaches the prescription dose.
    """
    tv, piv, tv_piv = _volumes(dose_gy, target_mask, prescription_gy, body_mask)
    if tv == 0 or piv == 0:
        return float("nan")
    return tv_piv * tv_piv / (tv * piv)


def conformity_rtog(dose_gy, target_mask, prescription_gy: float, body_mask=None) -> float:
    """RTOG conformity index ``PIV / TV`` (1 ideal, > 1 spill, < 1 under-coverage); NaN for an empty target."""
    tv, piv, _ = _volumes(dose_gy, target_mask, prescription_gy, body_mask)
    if tv == 0:
        return float("nan")
    return piv / tv


def homogeneity_icru83(dose_gy, target_mask) -> float:
    """ICRU 83 homogeneity index ``(D2 - D98) / D50`` (0 = uniform); NaN if empty or D50 = 0.

    D2, D98, D50 as in :mod:`core.evaluation.dvh` (percentiles of the voxel doses).
    """
    v = structure_doses(dose_gy, target_mask)
    if v.size == 0:
        return float("nan")
    d50 = dose_at_volume_pct(v, 50)
    if d50 <= 0:
        return float("nan")
    return (dose_at_volume_pct(v, 2) - dose_at_volume_pct(v, 98)) / d50


def _check_lq(n_fractions, alpha_beta_gy):
    if int(n_fractions) != n_fractions or n_fractions < 1:
        raise InputError(f"number of fractions must be a positive integer, got {n_fractions}")
    if not np.isfinite(alpha_beta_gy) or alpha_beta_gy <= 0:
        raise InputError(f"alpha/beta must be positive, got {alpha_beta_gy} Gy")


def bed(dose_gy, n_fractions: int, alpha_beta_gy: float):
    """Biologically effective dose ``D (1 + d / (alpha/beta))`` with ``d = D / n`` per voxel.

    Works on scalars and arrays (returns the same shape; float64 for scalars).
    """
    _check_lq(n_fractions, alpha_beta_gy)
    d_total = np.asarray(dose_gy, dtype=np.float64)
    out = d_total * (1.0 + (d_total / n_fractions) / alpha_beta_gy)
    return float(out) if out.ndim == 0 else out


def eqd2(dose_gy, n_fractions: int, alpha_beta_gy: float):
    """Equivalent dose in 2 Gy fractions ``D (d + a/b) / (2 + a/b)`` with ``d = D / n`` per voxel."""
    _check_lq(n_fractions, alpha_beta_gy)
    d_total = np.asarray(dose_gy, dtype=np.float64)
    out = d_total * (d_total / n_fractions + alpha_beta_gy) / (2.0 + alpha_beta_gy)
    return float(out) if out.ndim == 0 else out
