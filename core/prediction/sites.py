"""Per-site structure tables for dose prediction, and the name synonyms that map a
patient's structure names onto them.

A site fixes the input channels of its model: one channel per organ at risk in
``oars`` order, and the targets in ``targets`` whose prescription comes from the
patient's prescriptions or, failing that, from a number in the name (``PTV70``).
Sites live in a registry keyed by a short name (``"hn"``), never a string switch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from core.errors import InputError


def normalise_name(name: str) -> str:
    """Lower-case, drop spaces, underscores, dashes and dots: ``"Parotid_R"`` -> ``"parotidr"``."""
    return re.sub(r"[\s_\-\.]+", "", str(name)).lower()


@dataclass(frozen=True)
class SiteSpec:
    """The structures a site's model knows.

    Parameters
    ----------
    key : str
        Registry key (``"hn"``).
    oars : tuple of str
        Canonical organ-at-risk names, one model input channel each, in channel order.
    targets : tuple of str
        Canonical target names (their prescriptions are aggregated into one channel).
    synonyms : dict
        Canonical name -> tuple of synonyms (compared after :func:`normalise_name`).
    mirror_pairs : tuple of (str, str)
        OAR pairs that swap under a left-right flip (augmentation, test-time flips).
    reference_dose_gy : float
        Dose that scales the model's input and output (the site's usual top prescription).
    """

    key: str
    oars: tuple
    targets: tuple
    synonyms: dict = field(default_factory=dict)
    mirror_pairs: tuple = ()
    reference_dose_gy: float = 70.0

    def __post_init__(self):
        if not self.oars or not self.targets:
            raise InputError(f"site '{self.key}' needs organs at risk and targets")
        if self.reference_dose_gy <= 0:
            raise InputError(f"site '{self.key}': reference dose must be positive")

    def canonical(self, name: str) -> str | None:
        """The canonical structure name for ``name``, or ``None`` when the site does not know it."""
        n = normalise_name(name)
        for canon in self.oars + self.targets:
            if n == normalise_name(canon) or n in {normalise_name(s) for s in self.synonyms.get(canon, ())}:
                return canon
        # Targets with a dose in the name but spelled otherwise: "PTV_70Gy", "ptv 7000".
        m = re.match(r"^ptv(\d+(?:\.\d+)?)(gy|cgy)?$", n)
        if m:
            v = float(m.group(1))
            if m.group(2) == "cgy" or v > 200:
                v /= 100.0
            for t in self.targets:
                tm = re.match(r"^PTV(\d+)$", t)
                if tm and abs(float(tm.group(1)) - v) < 0.5:
                    return t
        return None


_HN = SiteSpec(
    key="hn",
    oars=("Brainstem", "SpinalCord", "RightParotid", "LeftParotid", "Esophagus", "Larynx", "Mandible"),
    targets=("PTV56", "PTV63", "PTV70"),
    synonyms={
        "Brainstem": ("BrainStem", "Brain Stem", "Brain_Stem", "Tronc", "BS"),
        "SpinalCord": ("Spinal Cord", "Cord", "Spinal_Cord", "SC", "Medulla", "Myelon", "SpinalCanal"),
        "RightParotid": ("Parotid_R", "R Parotid", "Parotid R", "Rt Parotid", "ParotidR", "R_Parotid",
                         "Parotid_Rt", "Right Parotid", "Parotis_R"),
        "LeftParotid": ("Parotid_L", "L Parotid", "Parotid L", "Lt Parotid", "ParotidL", "L_Parotid",
                        "Parotid_Lt", "Left Parotid", "Parotis_L"),
        "Esophagus": ("Oesophagus", "Esoph", "Esophagus_Cerv", "Esophagus_Upper"),
        "Larynx": ("Glottis", "Larynx_SG", "Larynx_Glottic"),
        "Mandible": ("Mandible_Bone", "Bone_Mandible", "Jaw", "Mandibula"),
        "PTV56": ("PTV_56", "PTV 56", "PTV56Gy", "PTV_5600", "PTV_low", "PTVLow"),
        "PTV63": ("PTV_63", "PTV 63", "PTV63Gy", "PTV_6300", "PTV_mid", "PTVMid", "PTV_int"),
        "PTV70": ("PTV_70", "PTV 70", "PTV70Gy", "PTV_7000", "PTV_high", "PTVHigh"),
    },
    mirror_pairs=(("RightParotid", "LeftParotid"),),
    reference_dose_gy=70.0,
)

SITES: dict = {"hn": _HN}


def get_site(key: str) -> SiteSpec:
    """The registered site ``key``; :class:`InputError` naming the known sites otherwise."""
    try:
        return SITES[str(key).lower()]
    except KeyError:
        raise InputError(f"unknown site '{key}' for dose prediction (known: {', '.join(sorted(SITES))})") from None


def target_dose_from_name(name: str) -> float | None:
    """Prescription (Gy) written in a target's name: ``PTV70`` -> 70, ``PTV_5600`` -> 56."""
    m = re.search(r"(\d+(?:\.\d+)?)\s*(gy|cgy)?\s*$", normalise_name(name))
    if not m:
        return None
    v = float(m.group(1))
    if m.group(2) == "cgy" or v > 200:
        v /= 100.0
    return v if 10.0 <= v <= 100.0 else None
