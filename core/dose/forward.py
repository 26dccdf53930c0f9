"""Forward dose: open fields, beamlet weights or fluence maps -> dose on the CT grid."""

from __future__ import annotations

import numpy as np

from core.dose.engine import FluenceMap
from core.errors import InputError


def open_field_fluence(beam, spacing_mm: float = 1.0, mu: float | None = None) -> FluenceMap:
    """Fluence map of an open (jaw-shaped) field: ``mu`` MU inside ``beam.field_mm``.

    Pixels on the field edge get their covered fraction, so the field size is exact.
    """
    if beam.field_mm is None:
        raise InputError(f"beam at gantry {beam.gantry_deg:g} has no field size: give field=WxH for an open field")
    mu = beam.mu if mu is None else float(mu)
    fu, fv = beam.field_mm
    nu, nv = int(np.ceil(fu / spacing_mm / 2)) + 2, int(np.ceil(fv / spacing_mm / 2)) + 2
    gu = spacing_mm * np.arange(-nu, nu + 1)
    gv = spacing_mm * np.arange(-nv, nv + 1)
    cu = np.clip((fu / 2 - np.abs(gu)) / spacing_mm + 0.5, 0, 1)
    cv = np.clip((fv / 2 - np.abs(gv)) / spacing_mm + 0.5, 0, 1)
    return FluenceMap(mu * cu[:, None] * cv[None, :], float(gu[0]), float(gv[0]), spacing_mm)


def beamlet_fluence(pos_mm: np.ndarray, weights_mu: np.ndarray, size_mm, machine,
                    spacing_mm: float = 1.0) -> FluenceMap:
    """Fluence map of beamlet weights (MU) of one beam, horns applied per beamlet centre
    exactly as the dose-influence matrix applies them."""
    pos = np.asarray(pos_mm, dtype=float).reshape(-1, 2)
    w = np.asarray(weights_mu, dtype=float).reshape(-1)
    if len(w) != len(pos):
        raise InputError(f"{len(w)} beamlet weights for {len(pos)} beamlets")
    if np.any(~np.isfinite(w)) or np.any(w < 0):
        raise InputError("beamlet weights must be finite and non-negative")
    bu, bv = (float(size_mm),) * 2 if np.isscalar(size_mm) else tuple(map(float, size_mm))
    w = w * machine.horn(np.hypot(pos[:, 0], pos[:, 1]))
    lo = pos.min(0) - np.array([bu, bv]) - 2 * spacing_mm
    hi = pos.max(0) + np.array([bu, bv]) + 2 * spacing_mm
    gu = np.arange(lo[0], hi[0] + spacing_mm, spacing_mm)
    gv = np.arange(lo[1], hi[1] + spacing_mm, spacing_mm)
    out = np.zeros((len(gu), len(gv)))
    for (pu, pv), wk in zip(pos, w):
        if wk == 0:
            continue
        cu = np.clip((bu / 2 - np.abs(gu - pu)) / spacing_mm + 0.5, 0, 1)
        cv = np.clip((bv / 2 - np.abs(gv - pv)) / spacing_mm + 0.5, 0, 1)
        iu, iv = np.flatnonzero(cu), np.flatnonzero(cv)
        out[iu[0]:iu[-1] + 1, iv[0]:iv[-1] + 1] += wk * cu[iu, None] * cv[None, iv]
    return FluenceMap(out, float(gu[0]), float(gv[0]), spacing_mm, horn_applied=True)


def forward_dose(patient, beams, fluence="open", mu: float | None = None, dose_grid_mm=None,
                 device="auto", engine: str | None = None, engine_options: dict | None = None,
                 beamlets=None, target_names=None, progress=None, cancel=None):
    """Dose of ``beams`` on the patient's CT grid.

    Parameters
    ----------
    fluence : ``"open"`` / ``None``, list of FluenceMap (one per beam, ``None`` = off), or a
        (n_beamlets,) array of beamlet weights in MU together with ``beamlets`` =
        ``(beam_of, pos_mm[, size_mm])`` (e.g. from a :class:`DoseInfluence`).
    mu : float, optional
        MU of every open field (default: each beam's ``mu``, 100).
    dose_grid_mm : optional coarser calculation grid; the result is interpolated back to
        the CT grid (trilinear).

    Returns
    -------
    core.patient.Dose on ``patient.grid``; ``dose.meta``-like details in ``dose.label``.
    """
    from core.device import resolve_device
    from core.dose.engine import DEFAULT_ENGINE, get_engine
    from core.patient import Dose

    dev = resolve_device(device)
    eng = get_engine(engine or DEFAULT_ENGINE, **(engine_options or {}))
    machine = eng.machine
    beams = beams.resolve(patient, target_names, max_field_mm=machine.max_field_mm)
    h = getattr(eng, "fluence_spacing_mm", 1.0)
    if fluence is None or (isinstance(fluence, str) and fluence == "open"):
        maps = [open_field_fluence(b, h, mu) for b in beams]
    elif isinstance(fluence, str):
        raise InputError(f"unknown fluence '{fluence}': use 'open' or give beamlet weights / fluence maps")
    elif isinstance(fluence, (list, tuple)) and all(f is None or isinstance(f, FluenceMap) for f in fluence):
        if len(fluence) != len(beams):
            raise InputError(f"{len(fluence)} fluence maps for {len(beams)} beams")
        maps = list(fluence)
    else:
        if beamlets is None:
            raise InputError("beamlet weights need the beamlets they belong to (beam index and position)")
        beam_of, pos = np.asarray(beamlets[0]), np.asarray(beamlets[1])
        size = beamlets[2] if len(beamlets) > 2 else 5.0
        w = np.asarray(fluence, dtype=float).reshape(-1)
        if len(w) != len(beam_of):
            raise InputError(f"{len(w)} beamlet weights for {len(beam_of)} beamlets")
        maps = []
        for ib in range(len(beams)):
            sel = beam_of == ib
            maps.append(beamlet_fluence(pos[sel], w[sel], size, machine, h) if sel.any() else None)
    from core.dose.engine import make_dose_grid

    dgrid = make_dose_grid(patient.grid, dose_grid_mm)
    dose, _ = eng.forward(patient, beams, maps, dose_grid=dgrid, device=dev, progress=progress, cancel=cancel)
    if not dgrid.same_as(patient.grid):
        from core.geometry import resample_to_grid

        dose = resample_to_grid(dose, dgrid, patient.grid, order=1)
        dose = dose * patient.external_mask()
    return Dose(dose.astype(np.float32), patient.grid, label=f"{eng.key}:{machine.name}")
