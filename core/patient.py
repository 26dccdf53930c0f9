"""The patient model: CT, structures, prescriptions and doses on one grid.

Every array lives on ``Patient.grid`` in the patient's own array order (see
:mod:`core.geometry`). Masks are ``bool`` arrays of ``grid.shape``; doses are
``float32`` Gy.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

import numpy as np

from core.errors import GeometryError, InputError
from core.geometry import Grid


class StructureRole(enum.Enum):
    """What a structure is for in planning."""

    TARGET = "TARGET"
    OAR = "OAR"
    EXTERNAL = "EXTERNAL"
    HELPER = "HELPER"


_TARGET_RE = re.compile(r"^(PTV|CTV|GTV|ITV)", re.IGNORECASE)
_EXTERNAL_RE = re.compile(r"^(BODY|EXTERNAL|SKIN|OUTLINE|PATIENT)$", re.IGNORECASE)
_HELPER_RE = re.compile(r"^(z|opt|ring|help|patch|hot|cold|avoid|dummy|couch|support)", re.IGNORECASE)


def guess_role(name: str, dicom_type: str | None = None) -> StructureRole:
    """Role from the RTSTRUCT ``RTROIInterpretedType`` if present, else from the name."""
    t = (dicom_type or "").upper()
    if t in {"PTV", "CTV", "GTV", "ITV"}:
        return StructureRole.TARGET
    if t == "EXTERNAL":
        return StructureRole.EXTERNAL
    if t in {"ORGAN", "OAR", "AVOIDANCE"}:
        return StructureRole.OAR
    if t in {"CONTROL", "SUPPORT", "FIXATION", "MARKER", "REGISTRATION", "BOLUS", "DOSE_REGION"}:
        return StructureRole.HELPER
    if _EXTERNAL_RE.match(name.strip()):
        return StructureRole.EXTERNAL
    if _TARGET_RE.match(name.strip()):
        return StructureRole.TARGET
    if _HELPER_RE.match(name.strip()):
        return StructureRole.HELPER
    return StructureRole.OAR


_PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
            (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
            (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
            (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128)]


def default_color(index: int) -> tuple:
    return _PALETTE[index % len(_PALETTE)]


@dataclass(eq=False)
class Structure:
    """A named region of interest.

    Parameters
    ----------
    name : str
    mask : (a0, a1, a2) bool ndarray on the patient grid
    role : StructureRole
    color : (r, g, b) ints 0-255
    has_contours : bool
        False when the source (e.g. an RTSTRUCT ROI) had no contour data: the
        structure is kept so the planner sees it, but flagged.
    rule : dict, optional
        For helper structures made by a rule (margin, ring, ...): the rule, so it can be
        regenerated when its sources change.
    """

    name: str
    mask: np.ndarray
    role: StructureRole = StructureRole.OAR
    color: tuple = (255, 0, 0)
    has_contours: bool = True
    rule: dict | None = None

    def __post_init__(self):
        if not self.name or not str(self.name).strip():
            raise InputError("a structure needs a name")
        self.mask = np.asarray(self.mask, dtype=bool)
        if self.mask.ndim != 3:
            raise InputError(f"structure '{self.name}': mask must be 3D, got {self.mask.ndim}D")
        if not isinstance(self.role, StructureRole):
            self.role = StructureRole(str(self.role).upper())

    @property
    def is_empty(self) -> bool:
        return not bool(self.mask.any())

    def n_voxels(self) -> int:
        return int(np.count_nonzero(self.mask))

    def volume_cc(self, grid: Grid) -> float:
        return self.n_voxels() * grid.voxel_volume_cc

    def centroid_mm(self, grid: Grid) -> np.ndarray:
        """Patient LPS (x, y, z) centroid in mm; raises for an empty structure."""
        if self.is_empty:
            raise GeometryError(f"structure '{self.name}' is empty")
        return grid.index_to_patient(np.argwhere(self.mask).mean(axis=0))[0]


@dataclass(frozen=True)
class Prescription:
    """``dose_gy`` in ``fractions`` fractions to ``structure``."""

    structure: str
    dose_gy: float
    fractions: int = 1

    def __post_init__(self):
        if not np.isfinite(self.dose_gy) or self.dose_gy <= 0:
            raise InputError(f"prescription to '{self.structure}': dose must be positive, got {self.dose_gy} Gy")
        if int(self.fractions) != self.fractions or self.fractions < 1:
            raise InputError(f"prescription to '{self.structure}': fractions must be a positive integer, "
                             f"got {self.fractions}")
        if self.dose_gy / self.fractions > 30:
            raise InputError(f"prescription to '{self.structure}': {self.dose_gy / self.fractions:.1f} Gy per fraction "
                             "is not plausible")
        object.__setattr__(self, "fractions", int(self.fractions))

    @property
    def dose_per_fraction_gy(self) -> float:
        return self.dose_gy / self.fractions


@dataclass(eq=False)
class CtImage:
    """CT in Hounsfield units.

    Parameters
    ----------
    hu : (a0, a1, a2) int16 or float32 ndarray, HU, on ``grid``
    grid : Grid
    """

    hu: np.ndarray
    grid: Grid

    def __post_init__(self):
        if self.hu.shape != self.grid.shape:
            raise GeometryError(f"CT array {self.hu.shape} does not match its grid {self.grid.shape}")


@dataclass(eq=False)
class Dose:
    """A dose distribution.

    Parameters
    ----------
    dose_gy : (a0, a1, a2) float32 ndarray, Gy, on ``grid``
    grid : Grid
    label : str
    """

    dose_gy: np.ndarray
    grid: Grid
    label: str = "dose"

    def __post_init__(self):
        self.dose_gy = np.asarray(self.dose_gy, dtype=np.float32)
        if self.dose_gy.shape != self.grid.shape:
            raise GeometryError(f"dose array {self.dose_gy.shape} does not match its grid {self.grid.shape}")
        if not np.all(np.isfinite(self.dose_gy)):
            raise InputError(f"dose '{self.label}' holds non-finite values")


@dataclass(eq=False)
class Patient:
    """Everything known about one patient, on one grid.

    ``ct`` is ``None`` for a dose-review load (RTSTRUCT + RTDOSE without images): then
    ``grid`` is the dose grid and ``warnings`` says that the images are missing.
    ``doses`` holds doses that came with the patient (``"reference"`` for an OpenKBP
    case's clinical dose or an imported RTDOSE). ``plans`` holds imported RTPLAN
    descriptions (plain dicts, see :mod:`core.io.dicom_import`). ``dicom`` holds UIDs
    and identifying attributes used for export.
    """

    patient_id: str
    grid: Grid
    ct: CtImage | None = None
    structures: dict = field(default_factory=dict)
    prescriptions: list = field(default_factory=list)
    doses: dict = field(default_factory=dict)
    plans: list = field(default_factory=list)
    possible_dose_mask: np.ndarray | None = None
    warnings: list = field(default_factory=list)
    source: str = ""
    dicom: dict = field(default_factory=dict)

    def add_structure(self, s: Structure, replace: bool = False) -> None:
        if s.mask.shape != self.grid.shape:
            raise GeometryError(f"structure '{s.name}' mask {s.mask.shape} does not match the patient grid "
                                f"{self.grid.shape}")
        if s.name in self.structures and not replace:
            raise InputError(f"a structure named '{s.name}' already exists")
        self.structures[s.name] = s

    def structure(self, name: str) -> Structure:
        try:
            return self.structures[name]
        except KeyError:
            raise InputError(f"no structure named '{name}' (have: {', '.join(self.structures) or 'none'})") from None

    def by_role(self, role: StructureRole) -> list:
        return [s for s in self.structures.values() if s.role is role]

    @property
    def targets(self) -> list:
        return self.by_role(StructureRole.TARGET)

    def prescription_for(self, name: str) -> Prescription | None:
        for p in self.prescriptions:
            if p.structure == name:
                return p
        return None

    def external_mask(self) -> np.ndarray:
        """The body outline: EXTERNAL structure, else OpenKBP's possible-dose mask, else
        a CT threshold (-350 HU, largest component, holes filled), with a warning."""
        ext = self.by_role(StructureRole.EXTERNAL)
        if ext and not ext[0].is_empty:
            return ext[0].mask
        if self.possible_dose_mask is not None:
            return self.possible_dose_mask
        if self.ct is None:
            raise GeometryError("no external contour and no CT to derive one from")
        msg = "no external (BODY) contour: derived one by thresholding the CT at -350 HU"
        if msg not in self.warnings:
            self.warnings.append(msg)
        return body_from_ct(self.ct.hu)


def body_from_ct(hu: np.ndarray, threshold_hu: float = -350.0) -> np.ndarray:
    """Largest connected region above ``threshold_hu``, holes filled slice by slice."""
    from scipy import ndimage

    above = hu > threshold_hu
    lab, n = ndimage.label(above)
    if n == 0:
        raise GeometryError("the CT holds no tissue above -350 HU: cannot find the body")
    sizes = ndimage.sum_labels(above, lab, index=np.arange(1, n + 1))
    body = lab == (int(np.argmax(sizes)) + 1)
    for k in range(body.shape[0]):
        body[k] = ndimage.binary_fill_holes(body[k])
    return body
