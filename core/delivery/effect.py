"""How much leaf sequencing changed the plan: ideal-fluence dose vs the segments' dose."""

from __future__ import annotations

import numpy as np

from core.evaluation.dvh import dose_at_volume_pct, mean_dose, structure_doses
from core.patient import StructureRole


def sequencing_effect(patient, fluence_dose_gy: np.ndarray, sequenced_dose_gy: np.ndarray) -> dict:
    """Target D95 and OAR mean dose before and after sequencing.

    Parameters
    ----------
    patient : core.patient.Patient
    fluence_dose_gy, sequenced_dose_gy : (a0, a1, a2) float ndarray, Gy, on ``patient.grid``
        Dose of the optimized (ideal) beamlet weights and of the delivered segments.

    Returns
    -------
    dict
        ``{"targets": [{"structure", "D95_fluence_gy", "D95_sequenced_gy", "change_gy",
        "change_pct"}], "oars": [{"structure", "mean_fluence_gy", "mean_sequenced_gy",
        "change_gy", "change_pct"}]}``; empty structures are left out. ``change_pct`` is
        relative to the fluence value (None when that is 0).
    """
    def row(name, key, a, b):
        pct = None if a == 0 or not np.isfinite(a) else 100.0 * (b - a) / a
        return {"structure": name, f"{key}_fluence_gy": a, f"{key}_sequenced_gy": b, "change_gy": b - a,
                "change_pct": pct}

    out = {"targets": [], "oars": []}
    for s in patient.structures.values():
        if s.is_empty or s.role not in (StructureRole.TARGET, StructureRole.OAR):
            continue
        f = structure_doses(fluence_dose_gy, s.mask)
        q = structure_doses(sequenced_dose_gy, s.mask)
        if s.role is StructureRole.TARGET:
            out["targets"].append(row(s.name, "D95", dose_at_volume_pct(f, 95), dose_at_volume_pct(q, 95)))
        else:
            out["oars"].append(row(s.name, "mean", mean_dose(f), mean_dose(q)))
    return out
