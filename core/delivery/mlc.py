"""Multileaf collimator and jaw models used for sequencing and RTPLAN export.

Coordinates are IEC 61217 beam-limiting-device (BLD) coordinates at the isocentre plane,
in mm: leaves move along ``x`` (the field's ``u`` axis of :mod:`core.dose.beams`), leaf
pairs are stacked along ``y`` (the field's ``v``). Leaf pair ``p`` covers
``leaf_boundaries_mm[p] <= y < leaf_boundaries_mm[p + 1]``; boundaries ascend from -y
to +y, exactly as DICOM ``LeafPositionBoundaries`` (300A,00BE). Bank A is the leaf on
the -x side of each pair (IEC leaf subscript 1, the first N values of DICOM
``LeafJawPositions``), bank B the +x side.

Models register under a short key (:func:`register_mlc_device`); the keys match
:data:`core.dose.beams.MLC_MODELS` where the same device exists there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.errors import InputError


@dataclass(frozen=True)
class MultileafCollimator:
    """Geometry and mechanical limits of one MLC plus its X/Y jaws.

    Parameters
    ----------
    name : str
        Registry key (e.g. ``"millennium120"``).
    leaf_boundaries_mm : tuple of float
        ``n_pairs + 1`` ascending leaf-pair boundaries along BLD y at the isocentre, mm.
    leaf_travel_mm : (2,) float
        Range every leaf tip can reach along x (includes over-travel past the central axis).
    max_leaf_span_mm : float
        Largest distance between the most extended and the most retracted leaf of one
        bank (the carriage limit).
    min_gap_mm : float
        Smallest distance between opposing leaves of a pair (and, when interdigitation is
        forbidden, between a leaf and the opposing leaf of a neighbouring pair).
    jaw_x_limits_mm, jaw_y_limits_mm : ((lo, hi), (lo, hi))
        Allowed positions of jaw 1 (the -side jaw) and jaw 2 (the +side jaw).
    position_resolution_mm : float
        Leaf/jaw positions are rounded to this step when segments are built.
    interdigitation : bool
        Whether the device allows a leaf to pass the opposing leaf of a neighbouring pair.
    """

    name: str
    leaf_boundaries_mm: tuple
    leaf_travel_mm: tuple = (-200.0, 200.0)
    max_leaf_span_mm: float = 145.0
    min_gap_mm: float = 0.5
    jaw_x_limits_mm: tuple = ((-200.0, 20.0), (-20.0, 200.0))
    jaw_y_limits_mm: tuple = ((-200.0, 100.0), (-100.0, 200.0))
    position_resolution_mm: float = 0.1
    interdigitation: bool = True
    manufacturer: str = ""
    model_name: str = ""

    def __post_init__(self):
        b = tuple(float(v) for v in self.leaf_boundaries_mm)
        if len(b) < 2 or not np.all(np.isfinite(b)) or np.any(np.diff(b) <= 0):
            raise InputError(f"MLC '{self.name}': leaf boundaries must be at least 2 ascending numbers (mm)")
        object.__setattr__(self, "leaf_boundaries_mm", b)
        lo, hi = (float(v) for v in self.leaf_travel_mm)
        if not lo < hi:
            raise InputError(f"MLC '{self.name}': leaf travel range must be (low, high) with low < high")
        object.__setattr__(self, "leaf_travel_mm", (lo, hi))
        for name in ("max_leaf_span_mm", "position_resolution_mm"):
            if not float(getattr(self, name)) > 0:
                raise InputError(f"MLC '{self.name}': {name} must be positive")
        if not float(self.min_gap_mm) >= 0:
            raise InputError(f"MLC '{self.name}': minimum leaf gap must be >= 0 mm")
        for name in ("jaw_x_limits_mm", "jaw_y_limits_mm"):
            lim = tuple(tuple(float(v) for v in pair) for pair in getattr(self, name))
            if len(lim) != 2 or any(len(p) != 2 or p[0] > p[1] for p in lim):
                raise InputError(f"MLC '{self.name}': {name} must be ((lo1, hi1), (lo2, hi2))")
            object.__setattr__(self, name, lim)

    @property
    def n_pairs(self) -> int:
        return len(self.leaf_boundaries_mm) - 1

    @property
    def boundaries(self) -> np.ndarray:
        """(n_pairs + 1,) float64 leaf boundaries, mm."""
        return np.asarray(self.leaf_boundaries_mm, dtype=np.float64)

    @property
    def leaf_widths_mm(self) -> np.ndarray:
        """(n_pairs,) float64 leaf widths at the isocentre, mm."""
        return np.diff(self.boundaries)

    def snap(self, x_mm):
        """Round positions to :attr:`position_resolution_mm`."""
        r = self.position_resolution_mm
        return np.round(np.asarray(x_mm, dtype=np.float64) / r) * r


_MLC_DEVICES: dict[str, MultileafCollimator] = {}


def register_mlc_device(mlc: MultileafCollimator) -> None:
    """Make ``mlc`` available under ``mlc.name``."""
    _MLC_DEVICES[mlc.name] = mlc


def available_mlc_devices() -> list[str]:
    return sorted(_MLC_DEVICES)


def get_mlc_device(name: str) -> MultileafCollimator:
    """The registered MLC ``name``; raises :class:`InputError` for an unknown key."""
    try:
        return _MLC_DEVICES[name]
    except KeyError:
        raise InputError(f"unknown MLC '{name}' for sequencing (have: {', '.join(available_mlc_devices())})") from None


def _boundaries(outer_mm: float, n_outer: int, inner_mm: float, n_inner: int) -> tuple:
    """Symmetric boundaries: n_outer leaves of outer_mm, n_inner of inner_mm, n_outer of outer_mm."""
    widths = [outer_mm] * n_outer + [inner_mm] * n_inner + [outer_mm] * n_outer
    edges = np.concatenate([[0.0], np.cumsum(widths)])
    return tuple(float(v) for v in edges - edges[-1] / 2.0)


#: Varian Millennium 120: 60 pairs, 40 central pairs of 5 mm, 10 outer pairs of 10 mm on
#: each side (40 cm field length). Leaf tips reach 20 cm past the central axis; the
#: leaves of one bank stay within a 14.5 cm span; 0.5 mm minimum opposed-leaf gap; X jaws
#: over-travel 2 cm, Y jaws 10 cm (Varian C-series / TrueBeam specifications).
MILLENNIUM_120 = MultileafCollimator(
    name="millennium120",
    leaf_boundaries_mm=_boundaries(10.0, 10, 5.0, 40),
    leaf_travel_mm=(-200.0, 200.0),
    max_leaf_span_mm=145.0,
    min_gap_mm=0.5,
    jaw_x_limits_mm=((-200.0, 20.0), (-20.0, 200.0)),
    jaw_y_limits_mm=((-200.0, 100.0), (-100.0, 200.0)),
    manufacturer="Varian Medical Systems",
    model_name="Millennium 120",
)

#: Varian HD120: 32 central pairs of 2.5 mm and 14 outer pairs of 5 mm each side (22 cm).
HD_120 = MultileafCollimator(
    name="hd120",
    leaf_boundaries_mm=_boundaries(5.0, 14, 2.5, 32),
    max_leaf_span_mm=145.0,
    min_gap_mm=0.5,
    manufacturer="Varian Medical Systems",
    model_name="HD120",
)

register_mlc_device(MILLENNIUM_120)
register_mlc_device(HD_120)

#: Used when a beam names an MLC that has no sequencing model (e.g. the dose engine's "ideal").
DEFAULT_MLC = "millennium120"


def mlc_for_beam(beam) -> MultileafCollimator:
    """The sequencing model for ``beam.mlc`` if registered, else :data:`DEFAULT_MLC`."""
    key = getattr(beam, "mlc", None)
    return _MLC_DEVICES.get(key, _MLC_DEVICES[DEFAULT_MLC])
