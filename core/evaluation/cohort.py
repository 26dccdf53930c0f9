"""Cohort statistics of two plan sets for the same patients (``openatp compare``).

For every structure endpoint (DVH points, mean, max, V-values, CI, HI, optionally in
EQD2) the two plan sets A and B are compared patient by patient:

* ``mean_a``, ``mean_b``: cohort means of the endpoint;
* ``mean_diff`` = mean over patients of ``a - b`` (with ``mean_diff_ci95``);
* ``rel_diff_pct`` = mean over patients of ``s * 100 (a - b) / a`` with its Student-t
  95 % confidence interval ``rel_diff_ci95``. A is the reference (e.g. the manual
  plans, the published ``(D_manual - D_auto) / D_manual``). ``s`` is ``+1`` except for
  coverage endpoints, where higher is better (target ``min``/``D90``..``D99``/``V*``
  and ``CI``), where it is ``-1``: so a positive relative difference always means
  **B is better** (lower OAR dose, lower hot spot, better coverage). Patients whose
  reference value is 0 have no relative difference and are left out of that mean
  only (``rel_diff_n`` says how many were used);
* ``p``: two-tailed paired t-test (scipy ``ttest_rel``), ``p_wilcoxon`` the Wilcoxon
  signed-rank check; ``p_bonferroni = min(1, p * m)`` where ``m`` is the number of
  endpoints in that analysis (the whole table; each group analysis is its own family),
  ``significant = p_bonferroni < 0.05``.

The statistics work on endpoint tables (``{patient_id: {(structure, metric): value}}``,
:func:`compare_tables`), so they can be checked on hand-made numbers; the file side
(:func:`compare_plan_sets`) finds the plans, loads patient and dose, and builds those
tables with :mod:`core.evaluation.dvh` and :mod:`core.evaluation.indices`.

EQD2 (``eqd2=True``): each plan's dose is converted voxel by voxel,
``EQD2 = D (D/n + a/b) / (2 + a/b)``, with that plan set's number of fractions ``n``
and the structure's alpha/beta (default 10 Gy for targets, 2 Gy for spinal cord and
brainstem, 3 Gy for other organs at risk, overridable per structure), before the
endpoints are taken; this is what makes plan sets with different fractionations
comparable. The metric names then end in ``_EQD2``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.errors import InputError
from core.evaluation.stats import bonferroni, mean_ci95, paired_test
from core.progress import check_cancel, report

#: The endpoints cli.md asks for by default (CI and HI only for targets).
DEFAULT_METRICS = ("D95", "D2", "D98", "mean", "max", "CI", "HI")

#: DVH keys computed by :func:`core.evaluation.dvh.dvh_endpoints`.
DVH_KEYS = ("mean", "max", "min", "D0.03cc", "D0.1cc", "D1", "D2", "D5", "D50", "D95", "D98", "D99")

ALPHA = 0.05

_V_GY_RE = re.compile(r"^V(\d+(?:\.\d+)?)Gy$")
_V_PCT_RE = re.compile(r"^V(\d+(?:\.\d+)?)$")
_DX_RE = re.compile(r"^D(\d+(?:\.\d+)?)$")

_TARGET_ONLY = ("CI", "HI")


# --------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MetricSpec:
    """One endpoint kind.

    Attributes
    ----------
    name : str
        As the user writes it: a DVH key (``D95``, ``mean``, ``D0.1cc``), ``V<x>Gy``
        (% volume receiving >= x Gy), ``V<x>`` (targets: % volume receiving >= x % of
        the target's prescription), ``CI`` (Paddick) or ``HI`` (ICRU 83).
    kind : str
        ``dvh``, ``v_gy``, ``v_pct``, ``ci`` or ``hi``.
    level : float
        The x of ``V<x>Gy`` / ``V<x>``; 0 otherwise.
    """

    name: str
    kind: str
    level: float = 0.0

    @property
    def targets_only(self) -> bool:
        return self.kind in ("v_pct", "ci", "hi")

    @property
    def unit(self) -> str:
        if self.kind == "dvh":
            return "Gy"
        if self.kind in ("v_gy", "v_pct"):
            return "%"
        return ""


def parse_metric(name: str) -> MetricSpec:
    """Parse a metric name; raises :class:`InputError` listing the accepted forms."""
    n = name.strip()
    if n in DVH_KEYS:
        return MetricSpec(n, "dvh")
    if n == "CI":
        return MetricSpec(n, "ci")
    if n == "HI":
        return MetricSpec(n, "hi")
    m = _V_GY_RE.match(n)
    if m:
        return MetricSpec(n, "v_gy", float(m.group(1)))
    m = _V_PCT_RE.match(n)
    if m:
        return MetricSpec(n, "v_pct", float(m.group(1)))
    raise InputError(f"unknown endpoint '{name}' (use {', '.join(DVH_KEYS)}, V<x>Gy, V<x> "
                     "(% of prescription, targets), CI, HI)")


def higher_is_better(metric: str, is_target: bool) -> bool:
    """True for coverage endpoints, where a larger value means a better plan.

    Targets: ``min``, ``D90`` and above (D95, D98, D99), every V-value and the
    conformity index. Everything else (OAR doses and volumes, target hot spots D2/max,
    HI, means) is better when lower.
    """
    base = metric[:-5] if metric.endswith("_EQD2") else metric
    if base == "CI":
        return True
    if not is_target:
        return False
    if base == "min" or base.startswith("V"):
        return True
    m = _DX_RE.match(base)
    return bool(m and float(m.group(1)) >= 90.0)


# --------------------------------------------------------------------------------------
# statistics on endpoint tables
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EndpointResult:
    """The comparison of one (structure, metric) endpoint; fields as in docs/cli.md."""

    structure: str
    metric: str
    n: int
    mean_a: float
    mean_b: float
    mean_diff: float
    mean_diff_ci95: tuple
    rel_diff_pct: float
    rel_diff_ci95: tuple
    rel_diff_n: int
    p: float
    p_bonferroni: float
    significant: bool
    p_wilcoxon: float
    higher_is_better: bool
    patient_ids: tuple = ()
    values_a: tuple = ()
    values_b: tuple = ()
    rel_diff_per_patient_pct: tuple = ()

    def to_dict(self, per_patient: bool = False) -> dict:
        d = {"structure": self.structure, "metric": self.metric, "mean_a": self.mean_a,
             "mean_b": self.mean_b, "mean_diff": self.mean_diff,
             "rel_diff_pct": self.rel_diff_pct, "rel_diff_ci95": list(self.rel_diff_ci95),
             "p": self.p, "p_bonferroni": self.p_bonferroni, "significant": self.significant,
             # extras beyond cli.md's fields
             "n": self.n, "mean_diff_ci95": list(self.mean_diff_ci95),
             "rel_diff_n": self.rel_diff_n, "p_wilcoxon": self.p_wilcoxon,
             "higher_is_better": self.higher_is_better}
        if per_patient:
            d["per_patient"] = [{"patient_id": p, "a": a, "b": b, "rel_diff_pct": r}
                                for p, a, b, r in zip(self.patient_ids, self.values_a, self.values_b,
                                                      self.rel_diff_per_patient_pct)]
        return d


@dataclass(frozen=True)
class CohortResult:
    """All endpoints of one analysis (the whole cohort, or one group of it).

    Attributes
    ----------
    n_patients : int
    patient_ids : tuple of str
    endpoints : tuple of EndpointResult
    n_tests : int
        The Bonferroni family size ``m`` (number of endpoints in this analysis).
    group : tuple (column, value) or None
    notes : tuple of str
        Endpoints left out because undefined for some patient (e.g. CI when no voxel
        reaches the prescription).
    """

    n_patients: int
    patient_ids: tuple
    endpoints: tuple
    n_tests: int
    group: tuple | None = None
    notes: tuple = ()

    def to_dict(self, per_patient: bool = False) -> dict:
        d = {"n_patients": self.n_patients,
             "endpoints": [e.to_dict(per_patient) for e in self.endpoints],
             "n_tests": self.n_tests, "patient_ids": list(self.patient_ids), "notes": list(self.notes)}
        if self.group is not None:
            d["group"] = {"by": self.group[0], "value": self.group[1]}
        return d

    def endpoint(self, structure: str, metric: str) -> EndpointResult:
        for e in self.endpoints:
            if e.structure == structure and e.metric == metric:
                return e
        raise KeyError((structure, metric))


def compare_tables(table_a: dict, table_b: dict, targets=(), coverage=None,
                   group: tuple | None = None, allow_missing: bool = False) -> CohortResult:
    """Paired statistics of two endpoint tables.

    Parameters
    ----------
    table_a, table_b : dict
        ``{patient_id: {(structure, metric): value}}``; A is the reference. Both must
        hold the same patients and, per patient, the same endpoints.
    targets : iterable of str
        Structure names that are targets (decides the coverage sign, see module doc).
    coverage : callable (structure, metric) -> bool, optional
        Overrides :func:`higher_is_better` for the sign of the relative difference.
    group : (column, value), optional
        Recorded on the result.
    allow_missing : bool
        False (default): every patient must have every endpoint. True: each endpoint is
        analysed on the patients that have it in both tables (its ``n`` says how many;
        fewer than 2 -> left out with a note).

    Returns
    -------
    CohortResult
        Endpoints in first-seen order; Bonferroni over all of them.

    Raises
    ------
    InputError
        Different patients in A and B (lists them), an endpoint missing for some
        patient, fewer than 2 patients.
    """
    ids_a, ids_b = set(table_a), set(table_b)
    if ids_a != ids_b:
        raise InputError("the plan sets hold different patients: "
                         + unmatched_message(sorted(ids_a - ids_b), sorted(ids_b - ids_a)))
    ids = sorted(table_a, key=natural_key)
    if len(ids) < 2:
        raise InputError(f"a paired comparison needs at least 2 patients, got {len(ids)}")
    keys: list = []
    for pid in ids:
        for k in list(table_a[pid]) + list(table_b[pid]):
            if k not in keys:
                keys.append(k)
    missing = [(pid, k) for pid in ids for k in keys if k not in table_a[pid] or k not in table_b[pid]]
    if missing and not allow_missing:
        shown = "; ".join(f"{pid}: {s} {m}" for pid, (s, m) in missing[:6])
        more = f" and {len(missing) - 6} more" if len(missing) > 6 else ""
        raise InputError(f"endpoints missing for some patients ({shown}{more})")
    targets = set(targets)
    coverage = coverage or (lambda s, m: higher_is_better(m, s in targets))
    notes, usable = [], []
    for key in keys:
        structure, metric = key
        have = [pid for pid in ids if key in table_a[pid] and key in table_b[pid]]
        bad = [pid for pid in have if not (np.isfinite(float(table_a[pid][key]))
                                           and np.isfinite(float(table_b[pid][key])))]
        if bad:
            notes.append(f"{structure} {metric} left out: undefined for {', '.join(bad)}")
        elif len(have) < 2:
            notes.append(f"{structure} {metric} left out: only {len(have)} patient(s) have it")
        else:
            usable.append((key, have))
    m_tests = len(usable)
    rows = []
    for (structure, metric), have in usable:
        a = np.array([table_a[pid][(structure, metric)] for pid in have], dtype=float)
        b = np.array([table_b[pid][(structure, metric)] for pid in have], dtype=float)
        test = paired_test(a, b)
        sign = -1.0 if coverage(structure, metric) else 1.0
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(a != 0, sign * 100.0 * (a - b) / np.where(a != 0, a, 1.0), np.nan)
        finite = rel[np.isfinite(rel)]
        r_mean, r_lo, r_hi = mean_ci95(finite)
        p_b = bonferroni(test.p, m_tests) if not math.isnan(test.p) else math.nan
        rows.append(EndpointResult(
            structure=structure, metric=metric, n=len(have), mean_a=float(a.mean()),
            mean_b=float(b.mean()), mean_diff=test.mean_diff, mean_diff_ci95=test.ci95,
            rel_diff_pct=r_mean, rel_diff_ci95=(r_lo, r_hi), rel_diff_n=int(finite.size),
            p=test.p, p_bonferroni=p_b, significant=bool(p_b < ALPHA) if not math.isnan(p_b) else False,
            p_wilcoxon=test.p_wilcoxon, higher_is_better=sign < 0, patient_ids=tuple(have),
            values_a=tuple(float(x) for x in a), values_b=tuple(float(x) for x in b),
            rel_diff_per_patient_pct=tuple(float(x) for x in rel)))
    return CohortResult(len(ids), tuple(ids), tuple(rows), m_tests, group, tuple(notes))


def compare_groups(table_a: dict, table_b: dict, groups: dict, targets=(), min_patients: int = 2,
                   allow_missing: bool = False) -> list:
    """One :func:`compare_tables` analysis per group value.

    Parameters
    ----------
    groups : dict
        ``{patient_id: {column: value}}`` (e.g. ``site``, ``institution``,
        ``preference``). Patients without a value for a column are left out of that
        column's analyses. Groups with fewer than ``min_patients`` patients are skipped.

    Returns
    -------
    list of CohortResult
        Sorted by column then value; each its own Bonferroni family.
    """
    columns = sorted({c for g in groups.values() for c in g})
    out = []
    for col in columns:
        values = sorted({str(g[col]) for pid, g in groups.items() if col in g and pid in table_a},
                        key=natural_key)
        for val in values:
            ids = [pid for pid in table_a if col in groups.get(pid, {}) and str(groups[pid][col]) == val]
            if len(ids) < min_patients:
                continue
            out.append(compare_tables({p: table_a[p] for p in ids}, {p: table_b[p] for p in ids},
                                      targets=targets, group=(col, val), allow_missing=allow_missing))
    return out


def natural_key(s: str):
    """Sort ``pt_2`` before ``pt_10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(s))]


def unmatched_message(only_a, only_b, name_a: str = "A", name_b: str = "B") -> str:
    parts = []
    if only_a:
        parts.append(f"only in {name_a}: {', '.join(only_a)}")
    if only_b:
        parts.append(f"only in {name_b}: {', '.join(only_b)}")
    return "; ".join(parts) or "none unmatched"


# --------------------------------------------------------------------------------------
# groups file
# --------------------------------------------------------------------------------------
def read_groups(path: str | Path) -> dict:
    """Read a groups table: CSV with a ``patient_id`` column plus one column per grouping
    (e.g. ``site``, ``institution``, ``preference``), or JSON ``{patient_id: {column: value}}``.
    """
    import csv
    import json

    path = Path(path)
    if not path.is_file():
        raise InputError("groups file not found", path)
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
                raise InputError("groups JSON must map patient ids to {column: value}", path)
            return {str(k): {str(c): str(x) for c, x in v.items()} for k, v in data.items()}
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"cannot read groups file ({exc})", path) from None
    if not rows or "patient_id" not in rows[0]:
        raise InputError("groups CSV needs a header with a 'patient_id' column", path)
    return {r["patient_id"].strip(): {c: (v or "").strip() for c, v in r.items()
                                      if c != "patient_id" and c and (v or "").strip()}
            for r in rows if (r.get("patient_id") or "").strip()}


# --------------------------------------------------------------------------------------
# files: plan sets and patients
# --------------------------------------------------------------------------------------
def discover_plan_set(folder: str | Path) -> dict:
    """``{patient_id: dose path}`` for a plan-set folder.

    An entry is an ``openatp plan`` output folder ``ID/`` (its ``dose.npz``, else its
    ``RTDOSE.dcm`` or single RTDOSE-like ``.dcm``), a DOSE file ``ID.npz``, or an
    RTDOSE file ``ID.dcm``. Hidden entries (``.partial`` folders) are ignored.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("plan set folder not found", folder)
    out: dict = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            out[entry.name] = plan_dose_file(entry)
        elif entry.suffix.lower() in (".npz", ".dcm"):
            out[entry.stem] = entry
    if not out:
        raise InputError("no plans found (expected ID/ plan folders, ID.npz DOSE or ID.dcm RTDOSE files)",
                         folder)
    return out


def plan_dose_file(folder: str | Path) -> Path:
    """The dose of a plan folder: ``dose.npz`` (``openatp plan``), else ``RTDOSE.dcm``, else its one RTDOSE."""
    folder = Path(folder)
    for name in ("dose.npz", "RTDOSE.dcm"):
        if (folder / name).is_file():
            return folder / name
    dose = _find_rtdose(folder)
    if dose is None:
        raise InputError("plan folder holds no dose.npz and no RTDOSE file", folder)
    return dose


def _find_rtdose(folder: Path) -> Path | None:
    """The one RTDOSE file in a folder (by name ``RD*.dcm``, else by DICOM Modality)."""
    dcms = sorted(folder.glob("RD*.dcm"))
    if len(dcms) == 1:
        return dcms[0]
    dcms = sorted(folder.glob("*.dcm"))
    if len(dcms) == 1:
        return dcms[0]
    if not dcms:
        return None
    import pydicom

    found = []
    for f in dcms:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["Modality"])
        except Exception:  # not DICOM: not a dose either
            continue
        if str(getattr(ds, "Modality", "")).upper() == "RTDOSE":
            found.append(f)
    if len(found) > 1:
        raise InputError(f"plan folder holds {len(found)} RTDOSE files; keep one per patient", folder)
    return found[0] if found else None


def discover_patients(folder: str | Path) -> dict:
    """``{patient_id: spec}`` for a patients folder (``ID.npz`` OpenKBP cases, ``ID/`` DICOM)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("patients folder not found", folder)
    out = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir() or entry.suffix.lower() == ".npz":
            out[entry.stem if entry.is_file() else entry.name] = entry
    if not out:
        raise InputError("no patients found (expected ID.npz OpenKBP cases or ID/ DICOM folders)", folder)
    return out


def match_plan_sets(plans_a: dict, plans_b: dict, patients: dict | None = None,
                    names=("PLANS_A", "PLANS_B")) -> list:
    """Patient ids present in both plan sets (and among the patients); else a clear error.

    Raises
    ------
    InputError
        Listing every unmatched id and where it is missing.
    """
    a, b = set(plans_a), set(plans_b)
    problems = []
    if a != b:
        problems.append(unmatched_message(sorted(a - b, key=natural_key), sorted(b - a, key=natural_key),
                                          names[0], names[1]))
    if patients is not None:
        no_patient = sorted((a | b) - set(patients), key=natural_key)
        if no_patient:
            problems.append(f"no patient in --patients for: {', '.join(no_patient)}")
    if problems:
        raise InputError("plan sets do not match patient by patient (" + "; ".join(problems) + ")")
    return sorted(a, key=natural_key)


def eqd2_gy(dose_gy, n_fractions: int, alpha_beta_gy: float):
    """Equivalent dose in 2-Gy fractions, ``D (D/n + a/b) / (2 + a/b)`` (:func:`core.evaluation.indices.eqd2`)."""
    from core.evaluation.indices import eqd2

    return eqd2(dose_gy, n_fractions, alpha_beta_gy)


@dataclass(frozen=True)
class EndpointOptions:
    """How endpoints are taken from a dose.

    Attributes
    ----------
    metrics : tuple of MetricSpec
    structures : tuple of str or None
        Explicit structure list (each must exist, non-empty, in every patient), or
        ``None``: every target and organ at risk present in all patients.
    eqd2 : bool
    fractions_a, fractions_b : int or None
        Fractions of each plan set (default: the patient's primary prescription).
    alpha_beta_gy : dict
        Per-structure alpha/beta overrides.
    allow_missing : bool
        False (cli.md default): only structures present in every patient. True: every
        target and organ at risk present in at least 2 patients, each endpoint analysed
        on the patients that have the structure.
    """

    metrics: tuple = tuple(parse_metric(m) for m in DEFAULT_METRICS)
    structures: tuple | None = None
    eqd2: bool = False
    fractions_a: int | None = None
    fractions_b: int | None = None
    alpha_beta_gy: dict = field(default_factory=dict)
    allow_missing: bool = False

    def __post_init__(self):
        if not self.metrics or not all(isinstance(m, MetricSpec) for m in self.metrics):
            raise InputError("give at least one endpoint metric")
        for name, f in (("A", self.fractions_a), ("B", self.fractions_b)):
            if f is not None and (int(f) != f or f < 1):
                raise InputError(f"fractions of plan set {name} must be a positive integer, got {f}")
        for name, ab in self.alpha_beta_gy.items():
            if not np.isfinite(ab) or ab <= 0:
                raise InputError(f"alpha/beta of {name} must be positive, got {ab} Gy")


def alpha_beta_for(name: str, is_target: bool, overrides: dict) -> float:
    """The structure's alpha/beta (Gy): an override, else
    :func:`core.evaluation.indices.default_alpha_beta_gy` (targets 10, cord/brainstem 2, other OARs 3)."""
    from core.evaluation.indices import default_alpha_beta_gy

    if name in overrides:
        return float(overrides[name])
    return default_alpha_beta_gy(name, is_target)


def _primary_rx(patient):
    return max(patient.prescriptions, key=lambda p: p.dose_gy) if patient.prescriptions else None


def _target_rx_gy(patient, name: str) -> float | None:
    rx = patient.prescription_for(name)
    if rx is not None:
        return rx.dose_gy
    m = re.search(r"(\d+(?:\.\d+)?)", name)
    # Target names like PTV70 carry their dose (OpenKBP convention) when no RT prescription names them.
    if m and 20.0 <= float(m.group(1)) <= 90.0:
        return float(m.group(1))
    return None


def _body_mask(patient):
    """The external outline for the Paddick PIV, or None (whole grid) when there is none."""
    from core.errors import GeometryError

    try:
        return patient.external_mask()
    except GeometryError:
        return None


def plan_endpoints(patient, dose_gy: np.ndarray, structures, targets, options: EndpointOptions,
                   fractions: int | None) -> dict:
    """``{(structure, metric): value}`` of one plan's dose for the given structures."""
    from core.evaluation.dvh import dvh_endpoints

    out = {}
    grid = patient.grid
    dose_gy = np.asarray(dose_gy, dtype=np.float32)
    suffix = "_EQD2" if options.eqd2 else ""
    for name in structures:
        mask = patient.structures[name].mask
        is_target = name in targets
        dose = dose_gy
        rx_gy = _target_rx_gy(patient, name) if is_target else None
        if options.eqd2:
            ab = alpha_beta_for(name, is_target, options.alpha_beta_gy)
            dose = eqd2_gy(dose_gy, fractions, ab).astype(np.float32)
            if rx_gy is not None:
                rx_gy = float(eqd2_gy(rx_gy, fractions, ab))
        dvh = None
        for spec in options.metrics:
            if spec.targets_only and not is_target:
                continue
            key = (name, spec.name + suffix)
            if spec.kind == "dvh":
                if dvh is None:
                    dvh = dvh_endpoints(dose, mask, grid)
                out[key] = float(dvh[spec.name])
            elif spec.kind == "v_gy":
                out[key] = float(100.0 * np.count_nonzero(dose[mask] >= spec.level) / np.count_nonzero(mask))
            elif rx_gy is None:
                raise InputError(f"target '{name}' has no prescription dose, needed for {spec.name}",
                                 patient.source or patient.patient_id)
            elif spec.kind == "v_pct":
                out[key] = float(100.0 * np.count_nonzero(dose[mask] >= spec.level / 100.0 * rx_gy)
                                 / np.count_nonzero(mask))
            elif spec.kind == "ci":
                from core.evaluation.indices import conformity_paddick
                out[key] = float(conformity_paddick(dose, mask, rx_gy, _body_mask(patient)))
            elif spec.kind == "hi":
                from core.evaluation.indices import homogeneity_icru83
                out[key] = float(homogeneity_icru83(dose, mask))
    return out


def _select_structures(patients: dict, options: EndpointOptions) -> tuple:
    """(structures, targets, notes) common to every patient."""
    from core.patient import StructureRole

    def present(p):
        return {n for n, s in p.structures.items() if not s.is_empty}

    if options.structures:
        missing = []
        for pid, p in patients.items():
            for name in options.structures:
                if name not in present(p):
                    missing.append(f"{pid} lacks {name}")
        if missing:
            raise InputError("a requested structure is missing or empty: " + "; ".join(missing))
        names = list(options.structures)
        notes = []
    else:
        counts: dict = {}
        for p in patients.values():
            for n in p.structures:
                if n in present(p) and p.structures[n].role in (StructureRole.TARGET, StructureRole.OAR):
                    counts[n] = counts.get(n, 0) + 1
        need = 2 if options.allow_missing else len(patients)
        names = [n for n, c in counts.items() if c >= need]
        if not names:
            raise InputError("no target or organ at risk is present in every patient"
                             + ("" if options.allow_missing else " (see --any-structure)"))
        notes = []
        every = set().union(*(present(p) for p in patients.values()))
        for n in sorted(every):
            lacking = [pid for pid, p in patients.items() if n not in present(p)]
            if not lacking:
                continue
            if n in names:
                notes.append(f"structure {n} analysed without {', '.join(lacking)} (missing there)")
            else:
                notes.append(f"structure {n} left out: missing in {', '.join(lacking)}")
    targets = {n for n in names
               if all(p.structures[n].role is StructureRole.TARGET for p in patients.values() if n in p.structures)}
    return names, targets, notes


@dataclass(frozen=True)
class CohortComparison:
    """Result of :func:`compare_plan_sets`: the whole cohort plus each group."""

    overall: CohortResult
    groups: tuple
    targets: tuple
    notes: tuple
    table_a: dict
    table_b: dict

    def to_dict(self, per_patient: bool = False) -> dict:
        d = self.overall.to_dict(per_patient)
        d["groups"] = [g.to_dict(per_patient) for g in self.groups]
        d["targets"] = list(self.targets)
        d["notes"] = list(self.notes) + list(self.overall.notes)
        return d


def load_plan_dose(path: Path, patient) -> np.ndarray:
    """Dose (Gy) of one plan on the patient's grid via :func:`core.io.dosefile.load_dose`."""
    from core.io.dosefile import load_dose

    d = load_dose(path, patient)
    return np.asarray(getattr(d, "dose_gy", d), dtype=np.float32)


def compare_plan_sets(plans_a: str | Path, plans_b: str | Path, patients_dir: str | Path,
                      options: EndpointOptions | None = None, groups: dict | None = None,
                      progress=None, cancel=None) -> CohortComparison:
    """Compare two plan-set folders patient by patient (``openatp compare``).

    Parameters
    ----------
    plans_a, plans_b : path
        Plan-set folders (see :func:`discover_plan_set`); A is the reference.
    patients_dir : path
        Patients folder (see :func:`discover_patients`).
    options : EndpointOptions, optional
    groups : dict, optional
        ``{patient_id: {column: value}}`` (see :func:`read_groups`).
    progress, cancel : optional

    Raises
    ------
    InputError
        Unmatched patients (listed), a requested structure missing, a dose that does not
        fit its patient, unknown fractionation for EQD2.
    """
    from core.io.loader import load_patient

    options = options or EndpointOptions()
    set_a, set_b = discover_plan_set(plans_a), discover_plan_set(plans_b)
    pats = discover_patients(patients_dir)
    ids = match_plan_sets(set_a, set_b, pats)
    if len(ids) < 2:
        raise InputError(f"a paired comparison needs at least 2 patients, found {len(ids)}", plans_a)
    loaded = {}
    doses_a, doses_b = {}, {}
    for i, pid in enumerate(ids):
        check_cancel(cancel)
        report(progress, i, 2 * len(ids), f"loading {pid}")
        p = load_patient(pats[pid])
        loaded[pid] = p
        doses_a[pid] = load_plan_dose(set_a[pid], p)
        doses_b[pid] = load_plan_dose(set_b[pid], p)
    names, targets, notes = _select_structures(loaded, options)
    table_a, table_b = {}, {}
    for i, pid in enumerate(ids):
        check_cancel(cancel)
        report(progress, len(ids) + i, 2 * len(ids), f"endpoints {pid}")
        p = loaded[pid]
        fa, fb = options.fractions_a, options.fractions_b
        if options.eqd2:
            rx = _primary_rx(p)
            fa = fa or (rx.fractions if rx else None)
            fb = fb or (rx.fractions if rx else None)
            if not fa or not fb:
                raise InputError("EQD2 needs the number of fractions: give --fractions-a/--fractions-b",
                                 pats[pid])
        here = [n for n in names if n in p.structures and not p.structures[n].is_empty]
        table_a[pid] = plan_endpoints(p, doses_a[pid], here, targets, options, fa)
        table_b[pid] = plan_endpoints(p, doses_b[pid], here, targets, options, fb)
        del doses_a[pid], doses_b[pid]
    overall = compare_tables(table_a, table_b, targets=targets, allow_missing=options.allow_missing)
    group_results = (tuple(compare_groups(table_a, table_b, groups, targets, allow_missing=options.allow_missing))
                     if groups else ())
    if groups:
        ungrouped = [pid for pid in ids if pid not in groups]
        if ungrouped:
            notes.append(f"no group given for {', '.join(ungrouped)}")
    report(progress, 1, 1, "done")
    return CohortComparison(overall, group_results, tuple(sorted(targets)), tuple(notes), table_a, table_b)
