"""OpenKBP evaluation: the dose score and the DVH score (Babier et al., Med. Phys. 2021).

Definitions follow the challenge's reference code (ababier/open-kbp, ``evaluation``):

- dose score of a patient: mean absolute voxel dose difference (Gy) over the
  possible-dose mask; the split's score is the mean over patients;
- DVH metrics: for each organ at risk ``D_0.1_cc`` (the dose exceeded by the hottest
  0.1 cc, as the percentile ``100 - n_0.1cc / n * 100`` with ``n_0.1cc`` =
  ``max(1, round(100 mm^3 / voxel volume))``; 0 if the organ is smaller) and ``mean``;
  for each target ``D_99``, ``D_95``, ``D_1`` (the 1st, 5th and 99th percentiles);
- DVH score: the mean absolute difference (Gy) over every metric of every structure
  present, pooled over all patients.
"""

from __future__ import annotations

import numpy as np

OAR_METRICS = ("D_0.1_cc", "mean")
TARGET_METRICS = ("D_99", "D_95", "D_1")


def dose_score(pred_gy: np.ndarray, ref_gy: np.ndarray, mask: np.ndarray) -> float:
    """Mean absolute dose difference (Gy) inside ``mask`` (one patient)."""
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return float("nan")
    return float(np.abs(pred_gy[m].astype(np.float64) - ref_gy[m]).mean())


def dvh_metrics(dose_gy: np.ndarray, structures: dict, spacing_mm) -> dict:
    """OpenKBP DVH metrics.

    Parameters
    ----------
    dose_gy : (a0, a1, a2) float ndarray, Gy
    structures : dict
        name -> (mask (a0, a1, a2) bool, kind) with kind ``"oar"`` or ``"target"``.
    spacing_mm : (3,) voxel size in mm.

    Returns
    -------
    dict ``{(name, metric): value_gy}`` for every non-empty structure.
    """
    voxel_mm3 = float(np.prod(spacing_mm))
    out = {}
    for name, (mask, kind) in structures.items():
        d = dose_gy[np.asarray(mask, dtype=bool)].astype(np.float64)
        if d.size == 0:
            continue
        if kind == "oar":
            n_tenth_cc = max(1.0, float(np.round(100.0 / voxel_mm3)))
            frac = 100.0 - n_tenth_cc / d.size * 100.0
            out[(name, "D_0.1_cc")] = float(np.percentile(d, frac)) if frac > 0 else 0.0
            out[(name, "mean")] = float(d.mean())
        elif kind == "target":
            out[(name, "D_99")] = float(np.percentile(d, 1))
            out[(name, "D_95")] = float(np.percentile(d, 5))
            out[(name, "D_1")] = float(np.percentile(d, 99))
        else:
            raise ValueError(f"unknown structure kind '{kind}'")
    return out


def dvh_errors(pred_metrics: dict, ref_metrics: dict) -> list:
    """Absolute differences (Gy) of the metrics both dicts hold."""
    return [abs(pred_metrics[k] - ref_metrics[k]) for k in ref_metrics if k in pred_metrics]


class ScoreAccumulator:
    """Collects per-patient dose scores and pooled DVH errors; :meth:`result` gives the
    split's OpenKBP dose score and DVH score (Gy)."""

    def __init__(self) -> None:
        self.dose = []
        self.dvh = []

    def add(self, pred_gy, ref_gy, body, structures: dict, spacing_mm) -> tuple:
        ds = dose_score(pred_gy, ref_gy, body)
        errs = dvh_errors(dvh_metrics(pred_gy, structures, spacing_mm), dvh_metrics(ref_gy, structures, spacing_mm))
        self.dose.append(ds)
        self.dvh.extend(errs)
        return ds, float(np.mean(errs)) if errs else float("nan")

    def result(self) -> dict:
        return {"dose_score_gy": float(np.nanmean(self.dose)) if self.dose else float("nan"),
                "dvh_score_gy": float(np.mean(self.dvh)) if self.dvh else float("nan"),
                "n_patients": len(self.dose)}
