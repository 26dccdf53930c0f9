"""Small synthetic review studies: tiny DOSE files with distinctive source names."""

from pathlib import Path

import numpy as np

from core.review.study import CaseInput, create_study

AUTO_DIR = "AUTOSRC_dir_7f3a"
MANUAL_DIR = "MANUALSRC_dir_9c1b"
ARM_NAMES = ("ArmAutoX1", "ArmClinicalY2")


def write_dose(path: Path, value: float, label: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    dose = np.full((4, 5, 6), value, dtype=np.float32)
    np.savez(path, dose_gy=dose, spacing_mm=np.array([2.0, 2.0, 2.0]), origin_mm=np.zeros(3),
             label=np.array(label))


def write_patient(path: Path) -> None:
    """An OpenKBP-shaped case whose clinical dose must not reach the study folder."""
    np.savez(path, ct=np.zeros((4, 5, 6), np.int16), dose_cgy=np.full((4, 5, 6), 7000, np.uint16),
             possible_dose_mask=np.ones((4, 5, 6), bool), masks=np.zeros((4, 5, 6), np.uint16),
             roi_names=np.array(["PTV70"]), voxel_dimensions_mm=np.array([2.0, 2.0, 2.0], np.float32))


def make_study(tmp: Path, n_cases: int = 6, reviewers=("ann", "bob", "cy"), seed: int = 7, sites=None,
               with_patients: bool = False, **kw):
    cases = []
    for i in range(n_cases):
        cid = f"pt_{i + 1}"
        auto = tmp / AUTO_DIR / f"{cid}.npz"
        manual = tmp / MANUAL_DIR / f"{cid}.npz"
        write_dose(auto, 60.0 + i, f"{AUTO_DIR}-{cid}")
        write_dose(manual, 70.0 + i, f"{MANUAL_DIR}-{cid}")
        patient = None
        if with_patients:
            patient = tmp / "patients_src" / f"{cid}.npz"
            patient.parent.mkdir(exist_ok=True)
            write_patient(patient)
        site = sites[i % len(sites)] if sites else ""
        cases.append(CaseInput(cid, auto, manual, patient, site))
    study_dir = tmp / "study"
    key = tmp / "coordinator" / "study.key.sqlite"
    st = create_study(study_dir, cases, list(reviewers), seed, key_path=key, arm_names=ARM_NAMES, **kw)
    return st, study_dir, key
