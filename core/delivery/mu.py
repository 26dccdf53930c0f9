"""Monitor units of a sequenced plan.

Calibration: the dose engine's dose-influence matrix is in Gy per MU with the machine's
absolute calibration (``core.dose.machine.PhotonMachine.gy_per_mu``: 100 MU of a
10 x 10 cm field at SSD 100 cm give 1 Gy at d_max in water), and a beamlet weight *is*
its MU (:mod:`core.dose.influence`). So a segment delivered with ``m`` MU contributes
``m * coverage`` to each beamlet weight, and the segment MU of the sequencer need no
further conversion. They are course MU (the optimizer plans the whole course);
``BeamMeterset`` in an RTPLAN is per fraction.
"""

from __future__ import annotations

import numpy as np

from core.errors import InputError


def per_fraction(mu: float, fractions: int) -> float:
    """Course MU -> MU per fraction."""
    if int(fractions) != fractions or fractions < 1:
        raise InputError(f"fractions must be a positive integer, got {fractions}")
    return float(mu) / int(fractions)


def plan_mu_summary(segmented_beams, fractions: int = 1, dose_per_fraction_gy: float | None = None) -> dict:
    """MU, segment counts and modulation of a sequenced plan.

    Parameters
    ----------
    segmented_beams : sequence of SegmentedBeam
    fractions : int
    dose_per_fraction_gy : float, optional
        Prescription dose per fraction; gives ``mu_per_cgy`` (MU per fraction per cGy
        prescribed, a common modulation measure: ~1 for open fields, 2-4 for IMRT).

    Returns
    -------
    dict
        ``total_mu`` (course), ``total_mu_per_fraction``, ``n_segments``, ``mu_per_cgy``
        (or None), ``beams``: [{``beam_index``, ``mu``, ``mu_per_fraction``, ``n_segments``,
        ``min_segment_mu_per_fraction``, ``mean_segment_area_cm2``, ``modulation``, and from the
        sequencer ``levels``, ``dropped_segments``, ``dropped_fluence_pct``,
        ``beamlet_rms_change_pct``, ``beamlet_max_change_pct``}], where
        ``modulation`` is beam MU / largest beamlet weight (1 = an open field).
    """
    beams = []
    for sb in segmented_beams:
        mlc = sb.mlc
        segs = sb.segments
        areas = [s.open_area_mm2(mlc) / 100.0 for s in segs]
        beams.append({
            "beam_index": sb.beam_index, "mu": sb.mu, "mu_per_fraction": per_fraction(sb.mu, fractions),
            "n_segments": sb.n_segments,
            "min_segment_mu_per_fraction": (min(s.mu for s in segs) / fractions) if segs else None,
            "mean_segment_area_cm2": float(np.mean(areas)) if areas else None,
            "modulation": sb.info.get("modulation"),
            **{k: sb.info.get(k) for k in ("levels", "dropped_segments", "dropped_fluence_pct",
                                           "beamlet_rms_change_pct", "beamlet_max_change_pct")},
        })
    total = float(sum(b["mu"] for b in beams))
    mu_per_cgy = None
    if dose_per_fraction_gy:
        mu_per_cgy = per_fraction(total, fractions) / (100.0 * float(dose_per_fraction_gy))
    return {"total_mu": total, "total_mu_per_fraction": per_fraction(total, fractions),
            "n_segments": int(sum(b["n_segments"] for b in beams)), "mu_per_cgy": mu_per_cgy, "beams": beams}
