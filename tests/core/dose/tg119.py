"""Load the TG-119 phantom and pyRadPlan reference plan (shared data) for tests/benchmarks."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.dose.beams import Beam, BeamSet
from core.geometry import Grid
from core.patient import CtImage, Patient, Structure, StructureRole


def load_tg119(tg119_dir: Path):
    """(patient, reference dict) - the npz arrays are [z, y, x] with identity directions,
    i.e. the DICOM grid order with origin (z, y, x) as stored."""
    t = np.load(Path(tg119_dir) / "tg119.npz")
    grid = Grid(t["ct_hu"].shape, tuple(t["spacing_mm"]), tuple(t["origin_mm"]))
    p = Patient("tg119", grid, ct=CtImage(t["ct_hu"].astype(np.float32), grid))
    p.add_structure(Structure("BODY", t["mask_BODY"].astype(bool), StructureRole.EXTERNAL))
    p.add_structure(Structure("OuterTarget", t["mask_OuterTarget"].astype(bool), StructureRole.TARGET))
    p.add_structure(Structure("Core", t["mask_Core"].astype(bool), StructureRole.OAR))
    r = dict(np.load(Path(tg119_dir) / "pyradplan_reference.npz"))
    iso = tuple(float(v) for v in r["iso_center_xyz_mm"])
    beams = BeamSet(tuple(Beam(gantry_deg=float(g), couch_deg=float(c), isocenter_mm=iso, sad_mm=float(r["sad_mm"]))
                          for g, c in zip(r["gantry_angles_deg"], r["couch_angles_deg"])), "pyradplan_tg119")
    # matRad BEV (x, depth, z) == our isocentre-plane (X, Z); collimator 0 -> (u, v) = (x, z).
    beam_of = r["bixel_beam_index"].astype(np.int64)
    pos = r["bixel_ray_pos_bev_mm"][:, [0, 2]].astype(np.float64)
    order = np.lexsort((pos[:, 1], pos[:, 0], beam_of))     # our raster order within each beam
    ref = {"dose_gy": r["dose_pyradplan_gy"], "beams": beams, "beam_of": beam_of[order], "pos_mm": pos[order],
           "weights": r["bixel_weights"][order].astype(np.float64), "hlut": r["hlut_hu_to_red"]}
    return p, ref
