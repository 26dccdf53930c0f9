"""Blinded side-by-side review study: create, answer, resume, unblind.

A study compares two plans per patient, an *automated* arm and a *manual* (e.g.
clinical) arm. Each reviewer sees every case as "Plan A" and "Plan B" in an order
drawn once per reviewer and case from the study seed (:func:`assign_orders`: balanced,
half of each reviewer's cases show the automated plan as A, reproducible per seed).

Threat model
------------
*Who*: reviewers can read every file in the study folder (it is handed to them or
shared on a drive) and everything the review screen shows. They cannot read the key
file, which the coordinator keeps outside the study folder (``create`` refuses a key
path inside it). *What must not leak before unblinding*: which plan is automated, the
arm names, and the plans' source paths or labels. *How*:

* plans are copied into ``plans/<token>.npz`` with a random token, holding only
  ``dose_gy``, ``spacing_mm`` and ``origin_mm`` (labels and other arrays of the source
  are dropped); the two files of a case are written in random order and stamped with
  the same fixed modification time, and the token table is filled in random order, so
  neither names, file order, times nor row order say which is which. They are stored
  *uncompressed*: both plans of a case are on the patient grid, so their files have
  exactly the same size (compressed, the size followed how smooth each dose is: on ten
  OpenKBP validation cases every predicted dose compressed worse than the clinical one,
  458 vs 281 kB for pt_201, so ``ls -l`` named the automated plan in 10 of 10 cases).
  The cost is 4 bytes per voxel per plan (8.4 MB for a 128^3 OpenKBP grid);
* patients are copied into ``patients/`` *without* any dose (an OpenKBP case's
  reference dose would be the clinical plan itself; from a DICOM folder only CT/MR
  and RTSTRUCT files are copied);
* ``answers.sqlite`` holds case ids, sites, tokens, each reviewer's A/B -> token
  presentation and the answers; the token -> arm key and source paths are only in the
  key file (:mod:`core.review.store`), copied into the study by :func:`unblind`, after
  which answering is closed.

Out of scope: the dose distributions themselves (telling plans apart by their look is
what the study measures; this includes the numerical precision of the stored values,
e.g. an OpenKBP clinical dose is a whole number of cGy, which a reviewer who loads the
array could notice, while the screen shows doses to 0.01 Gy for both plans alike), and
reviewers reading each other's answers in the shared file (a protocol matter; answers
carry the reviewer's name).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.errors import InputError
from core.progress import check_cancel, report
from core.review.questionnaire import Questionnaire, get_questionnaire
from core.review.store import ANSWERS_SCHEMA, DEFAULT_BUSY_TIMEOUT_MS, KEY_SCHEMA, Store

ANSWERS_FILE = "answers.sqlite"
AUTOMATED, MANUAL = "automated", "manual"
#: The fixed modification time of every copied plan file (2000-01-01T00:00:00Z).
FIXED_MTIME = 946684800


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def default_key_path(study_dir: str | Path) -> Path:
    """``STUDY.key.sqlite`` beside the study folder (the coordinator's copy)."""
    study_dir = Path(study_dir)
    return study_dir.parent / f"{study_dir.name}.key.sqlite"


# --------------------------------------------------------------------------------------
# randomization
# --------------------------------------------------------------------------------------
def _reviewer_seed(reviewer: str) -> int:
    # A stable hash (not Python's salted hash()): the order must be the same in every run.
    return int.from_bytes(hashlib.sha256(reviewer.encode("utf-8")).digest()[:8], "little")


def assign_orders(seed: int, reviewer: str, case_ids) -> tuple[list, dict]:
    """Case order and A/B assignment of one reviewer.

    Parameters
    ----------
    seed : int
        The study seed.
    reviewer : str
    case_ids : iterable of str

    Returns
    -------
    order : list of str
        The order the reviewer sees the cases in.
    automated_is_a : dict
        ``{case_id: bool}``; exactly ``n // 2`` cases (or ``n // 2 + 1``, drawn at random,
        for odd n) show the automated plan as A: a permuted block, so no reviewer sees
        one arm mostly on one side.

    Notes
    -----
    Depends only on ``seed``, the reviewer name and the *set* of case ids, so it is
    reproducible and does not change when reviewers are added in another order.
    """
    ids = sorted(set(str(c) for c in case_ids))
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) & (2**63 - 1), _reviewer_seed(reviewer)]))
    n = len(ids)
    n_a = n // 2 + (int(rng.integers(0, 2)) if n % 2 else 0)
    flags = np.zeros(n, dtype=bool)
    flags[:n_a] = True
    rng.shuffle(flags)
    order = [ids[i] for i in rng.permutation(n)]
    return order, {cid: bool(f) for cid, f in zip(ids, flags)}


# --------------------------------------------------------------------------------------
# copying plans and patients into the study folder, blinded
# --------------------------------------------------------------------------------------
def export_plan(src: str | Path, dst: Path, patient_spec=None) -> tuple:
    """Write plan ``src`` as a bare DOSE file ``dst`` (``dose_gy``, ``spacing_mm``, ``origin_mm``).

    ``src`` is a DOSE ``.npz`` or a plan folder (its ``dose.npz`` or RTDOSE), else
    any file :func:`core.io.dosefile.load_dose` reads (RTDOSE, an OpenKBP case's
    clinical dose), put onto the patient's grid.

    Returns
    -------
    (shape, spacing_mm) : (tuple of 3 int, tuple of 3 float)
        The grid written, so the caller can check both plans of a case share it.
    """
    from core.io.atomic import atomic_save_npz

    from core.evaluation.cohort import plan_dose_file

    src = Path(src)
    if src.is_dir():
        src = plan_dose_file(src)
    if not src.is_file():
        raise InputError("plan dose not found", src)
    is_dose_npz = False
    if src.suffix.lower() == ".npz":
        try:
            with np.load(src, allow_pickle=False) as z:
                is_dose_npz = "dose_gy" in z.files
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read DOSE file ({exc})", src) from None
    if is_dose_npz:
        try:
            with np.load(src, allow_pickle=False) as z:
                dose = np.asarray(z["dose_gy"], dtype=np.float32)
                spacing = np.asarray(z["spacing_mm"], dtype=np.float64) if "spacing_mm" in z.files else None
                origin = np.asarray(z["origin_mm"], dtype=np.float64) if "origin_mm" in z.files else None
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read DOSE file ({exc})", src) from None
        if dose.ndim != 3 or not np.all(np.isfinite(dose)):
            raise InputError("DOSE file 'dose_gy' must be a finite 3D array", src)
        if spacing is None or origin is None:
            raise InputError("DOSE file lacks spacing_mm / origin_mm", src)
    else:
        from core.io.dosefile import load_dose
        from core.io.loader import load_patient

        if patient_spec is None:
            raise InputError("this plan (RTDOSE or OpenKBP case) needs its patient: give --patients", src)
        patient = load_patient(patient_spec)
        d = load_dose(src, patient)
        dose = np.asarray(getattr(d, "dose_gy", d), dtype=np.float32)
        spacing = np.asarray(patient.grid.spacing_mm)
        origin = np.asarray(patient.grid.origin_mm)
    # Uncompressed, C order, fixed dtypes and shapes: equal grids give byte-for-byte equal
    # headers and equal file sizes (module docstring, threat model).
    dose = np.ascontiguousarray(dose, dtype=np.float32)
    spacing = np.ascontiguousarray(spacing, dtype=np.float64).reshape(-1)
    origin = np.ascontiguousarray(origin, dtype=np.float64).reshape(-1)
    atomic_save_npz(dst, compressed=False, dose_gy=dose, spacing_mm=spacing, origin_mm=origin)
    os.utime(dst, (FIXED_MTIME, FIXED_MTIME))
    return tuple(int(n) for n in dose.shape), tuple(round(float(v), 4) for v in spacing)


def export_patient(spec, dst_dir: Path, case_id: str) -> str:
    """Copy the patient into the study without any dose; returns the reviewer-facing spec.

    OpenKBP ``.npz``: every array except dose arrays; DICOM folder: CT, MR and RTSTRUCT
    files only; ``phantom:...`` specs are kept as text; ``None`` gives ``""``.
    """
    from core.io.atomic import atomic_save_npz

    if spec is None or str(spec) == "":
        return ""
    text = str(spec)
    if text.lower().startswith("phantom:"):
        return text
    src = Path(text)
    if src.is_file() and src.suffix.lower() == ".npz":
        try:
            with np.load(src, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files if "dose" not in k.lower() or k == "possible_dose_mask"}
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read patient file ({exc})", src) from None
        dst = dst_dir / f"{case_id}.npz"
        atomic_save_npz(dst, **arrays)
        return f"patients/{dst.name}"
    if src.is_dir():
        import pydicom

        dst = dst_dir / case_id
        dst.mkdir(parents=True, exist_ok=True)
        n = 0
        for f in sorted(p for p in src.rglob("*") if p.is_file()):
            try:
                ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["Modality"])
            except Exception:  # not DICOM: ignore, as the loader does
                continue
            if str(getattr(ds, "Modality", "")).upper() in ("CT", "MR", "RTSTRUCT"):
                n += 1
                shutil.copyfile(f, dst / f"{n:05d}.dcm")
        if n == 0:
            raise InputError("no CT or RTSTRUCT files in the patient folder", src)
        return f"patients/{case_id}"
    raise InputError("patient not found (expected an OpenKBP .npz, a DICOM folder or phantom:...)", src)


# --------------------------------------------------------------------------------------
# creating a study
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CaseInput:
    """One patient of a new study: its two plans and where the patient is."""

    case_id: str
    plan_automated: Path
    plan_manual: Path
    patient: str | Path | None = None
    site: str = ""

    def __post_init__(self):
        if not str(self.case_id).strip() or "/" in str(self.case_id):
            raise InputError(f"invalid case id '{self.case_id}'")


def _check_names(reviewers) -> list:
    names = [str(r).strip() for r in reviewers]
    if not names or any(not n for n in names):
        raise InputError("a study needs at least one reviewer, each with a name")
    if len(set(names)) != len(names):
        raise InputError(f"reviewer names repeat: {', '.join(names)}")
    return names


def create_study(study_dir: str | Path, cases, reviewers, seed: int, key_path: str | Path | None = None,
                 questionnaire: Questionnaire | str | None = None,
                 arm_names: tuple = ("automated", "manual"), progress=None, cancel=None) -> "ReviewStudy":
    """Create a blinded review study folder and its key file.

    Parameters
    ----------
    study_dir : path
        New folder (must not exist or be empty) the reviewers get.
    cases : list of CaseInput
    reviewers : list of str
    seed : int
        Randomization seed (stored in the key only).
    key_path : path, optional
        Where the key goes; default :func:`default_key_path`. Must lie outside ``study_dir``.
    questionnaire : Questionnaire or version name or JSON path, optional
        Default: the published questionnaire.
    arm_names : (str, str)
        Display names of the automated and the manual arm, revealed at unblinding.

    Returns
    -------
    ReviewStudy
        Opened on the new study.
    """
    study_dir = Path(study_dir)
    key_path = Path(key_path) if key_path else default_key_path(study_dir)
    q = questionnaire if isinstance(questionnaire, Questionnaire) else get_questionnaire(questionnaire)
    names = _check_names(reviewers)
    cases = list(cases)
    if not cases:
        raise InputError("a study needs at least one case")
    ids = [c.case_id for c in cases]
    if len(set(ids)) != len(ids):
        raise InputError(f"case ids repeat: {', '.join(sorted(i for i in set(ids) if ids.count(i) > 1))}")
    if study_dir.exists() and (not study_dir.is_dir() or any(study_dir.iterdir())):
        raise InputError("study folder already exists and is not empty", study_dir)
    key_abs, study_abs = key_path.resolve(), study_dir.resolve()
    if key_abs == study_abs or study_abs in key_abs.parents:
        raise InputError("the key must be kept outside the study folder (reviewers can read that folder)",
                         key_path)
    if key_path.exists():
        raise InputError("a key file already exists here", key_path)
    study_id = secrets.token_hex(8)
    sysrand = secrets.SystemRandom()
    key_path.parent.mkdir(parents=True, exist_ok=True)
    key_tmp = Path(tempfile.mkdtemp(prefix=f".{key_path.name}.", dir=key_path.parent)) / key_path.name
    study_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{study_dir.name}.", suffix=".partial", dir=study_dir.parent))
    try:
        (tmp_dir / "plans").mkdir()
        (tmp_dir / "patients").mkdir()
        tokens = {}  # (case_id, arm) -> token
        patient_files = {}
        for i, c in enumerate(cases):
            check_cancel(cancel)
            report(progress, i, len(cases), f"copying case {c.case_id}")
            arms = [(AUTOMATED, c.plan_automated), (MANUAL, c.plan_manual)]
            sysrand.shuffle(arms)  # write order must not reveal the arm
            grids = {}
            for arm, src in arms:
                tok = secrets.token_hex(8)
                grids[arm] = export_plan(src, tmp_dir / "plans" / f"{tok}.npz", c.patient)
                tokens[(c.case_id, arm)] = tok
            if grids[AUTOMATED] != grids[MANUAL]:
                # shown side by side they must share a grid; the file sizes would differ too
                (sa, pa), (sm, pm) = grids[AUTOMATED], grids[MANUAL]
                raise InputError(f"case {c.case_id}: the two plans are on different dose grids "
                                 f"({'x'.join(map(str, sa))} at {pa} mm vs {'x'.join(map(str, sm))} at {pm} mm); "
                                 "put both on the patient's grid (give --patients for RTDOSE plans)",
                                 c.plan_automated)
            patient_files[c.case_id] = export_patient(c.patient, tmp_dir / "patients", c.case_id)
        answers = Store(tmp_dir / ANSWERS_FILE, create=True, schema=ANSWERS_SCHEMA, kind="answers")
        try:
            with answers.transaction("creating the study") as db:
                db.execute("INSERT INTO meta VALUES ('study_id', ?)", (study_id,))
                db.execute("INSERT INTO meta VALUES ('created_utc', ?)", (_now(),))
                db.execute("INSERT INTO meta VALUES ('questionnaire', ?)", (q.to_json(),))
                for c in sorted(cases, key=lambda c: c.case_id):
                    db.execute("INSERT INTO cases VALUES (?, ?, ?)", (c.case_id, c.site, patient_files[c.case_id]))
                rows = [(tok, cid, f"plans/{tok}.npz") for (cid, _), tok in tokens.items()]
                sysrand.shuffle(rows)  # row order must not reveal the arm
                db.executemany("INSERT INTO plans VALUES (?, ?, ?)", rows)
                for name in names:
                    _insert_reviewer(db, name, seed, ids, tokens)
        finally:
            answers.close()
        key = Store(key_tmp, create=True, schema=KEY_SCHEMA, kind="key")
        try:
            with key.transaction("writing the key") as db:
                for k, v in (("study_id", study_id), ("seed", str(int(seed))), ("created_utc", _now()),
                             ("arm_names", json.dumps({AUTOMATED: arm_names[0], MANUAL: arm_names[1]}))):
                    db.execute("INSERT INTO meta VALUES (?, ?)", (k, v))
                for c in cases:
                    for arm, src in ((AUTOMATED, c.plan_automated), (MANUAL, c.plan_manual)):
                        db.execute("INSERT INTO sources VALUES (?, ?, ?, ?)",
                                   (tokens[(c.case_id, arm)], c.case_id, arm, str(Path(src).resolve())))
        finally:
            key.close()
        if study_dir.exists():
            study_dir.rmdir()
        os.replace(tmp_dir, study_dir)
        os.replace(key_tmp, key_path)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(key_tmp.parent, ignore_errors=True)
    report(progress, 1, 1, "study created")
    return ReviewStudy(study_dir)


def _insert_reviewer(db, name: str, seed: int, case_ids, tokens: dict) -> None:
    order, auto_a = assign_orders(seed, name, case_ids)
    db.execute("INSERT INTO reviewers VALUES (?)", (name,))
    for pos, cid in enumerate(order):
        a_arm, b_arm = (AUTOMATED, MANUAL) if auto_a[cid] else (MANUAL, AUTOMATED)
        db.execute("INSERT INTO presentations VALUES (?, ?, ?, 'A', ?)", (name, cid, pos, tokens[(cid, a_arm)]))
        db.execute("INSERT INTO presentations VALUES (?, ?, ?, 'B', ?)", (name, cid, pos, tokens[(cid, b_arm)]))


def add_reviewer(study_dir: str | Path, name: str, key_path: str | Path | None = None) -> None:
    """Add a reviewer to an existing study (needs the key: the assignment uses arm tokens)."""
    study_dir = Path(study_dir)
    key_path = Path(key_path) if key_path else default_key_path(study_dir)
    name = _check_names([name])[0]
    with Store(key_path, kind="key", schema=KEY_SCHEMA) as key, ReviewStudy(study_dir) as st:
        _check_key(st, key)
        if name in st.reviewers():
            raise InputError(f"reviewer '{name}' is already in the study", study_dir)
        if st.is_unblinded:
            raise InputError("the study is unblinded: no new reviewers", study_dir)
        tokens = {(cid, arm): tok for tok, cid, arm in key.query("SELECT token, case_id, arm FROM sources")}
        with st.store.transaction("adding a reviewer") as db:
            _insert_reviewer(db, name, int(key.get_meta("seed")), st.case_ids(), tokens)


def _check_key(study: "ReviewStudy", key: Store) -> None:
    if key.get_meta("study_id") != study.study_id:
        raise InputError("this key belongs to another study", key.path)


# --------------------------------------------------------------------------------------
# using a study
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CaseView:
    """What the review screen shows for one case: nothing here names an arm.

    Attributes
    ----------
    reviewer, case_id, site : str
    position : int
        0-based place in this reviewer's order.
    patient : str
        Patient spec (a path inside the study folder, or ``phantom:...``; ``""`` if none).
    plan_a, plan_b : Path
        The two DOSE files, as "Plan A" and "Plan B".
    answers : dict
        ``{question_id: value}`` given so far.
    complete : bool
        Every required question answered.
    """

    reviewer: str
    case_id: str
    position: int
    site: str
    patient: str
    plan_a: Path
    plan_b: Path
    answers: dict = field(default_factory=dict)
    complete: bool = False


class ReviewStudy:
    """An open study folder (``answers.sqlite`` plus plan and patient copies).

    Parameters
    ----------
    study_dir : path
    readonly : bool
        Open the database read-only (status, results).
    busy_timeout_ms : int
        How long a save waits for another reviewer's save before it reports a lock.
    """

    def __init__(self, study_dir: str | Path, readonly: bool = False,
                 busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS):
        self.dir = Path(study_dir)
        if not self.dir.is_dir():
            raise InputError("no study folder here", self.dir)
        self.store = Store(self.dir / ANSWERS_FILE, kind="answers", schema=ANSWERS_SCHEMA,
                           busy_timeout_ms=busy_timeout_ms, readonly=readonly)
        try:
            self.study_id = self.store.get_meta("study_id")
            raw = self.store.get_meta("questionnaire")
            try:
                data = json.loads(raw or "")
            except ValueError:
                raise InputError("the study's questionnaire is unreadable", self.store.path) from None
            self.questionnaire = Questionnaire.from_dict(data, str(self.store.path))
        except BaseException:
            self.store.close()
            raise

    # context manager
    def close(self) -> None:
        self.store.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- read ---------------------------------------------------------------------------
    @property
    def is_unblinded(self) -> bool:
        return self.store.get_meta("unblinded_utc") is not None

    def reviewers(self) -> list:
        return [r[0] for r in self.store.query("SELECT name FROM reviewers ORDER BY name")]

    def case_ids(self) -> list:
        return [r[0] for r in self.store.query("SELECT case_id FROM cases ORDER BY case_id")]

    def sites(self) -> dict:
        return dict(self.store.query("SELECT case_id, site FROM cases"))

    def _require_reviewer(self, reviewer: str) -> None:
        if not self.store.query("SELECT 1 FROM reviewers WHERE name = ?", (reviewer,)):
            raise InputError(f"no reviewer '{reviewer}' in this study (have: {', '.join(self.reviewers())})",
                             self.dir)

    def answers_for(self, reviewer: str, case_id: str) -> dict:
        return dict(self.store.query("SELECT question_id, value FROM answers WHERE reviewer = ? AND case_id = ?",
                                     (reviewer, case_id)))

    def all_answers(self) -> dict:
        """``{(reviewer, case_id): {question_id: value}}``."""
        out: dict = {}
        for r, c, q, v in self.store.query("SELECT reviewer, case_id, question_id, value FROM answers"):
            out.setdefault((r, c), {})[q] = v
        return out

    def _complete(self, answers: dict) -> bool:
        return all(q in answers for q in self.questionnaire.required_ids)

    def cases_for(self, reviewer: str) -> list:
        """This reviewer's cases, in their order, as :class:`CaseView`."""
        self._require_reviewer(reviewer)
        rows = self.store.query(
            "SELECT p.case_id, p.position, p.handle, pl.file, c.site, c.patient_file FROM presentations p "
            "JOIN plans pl ON pl.token = p.token JOIN cases c ON c.case_id = p.case_id "
            "WHERE p.reviewer = ? ORDER BY p.position, p.handle", (reviewer,))
        got = {}
        for cid, pos, handle, file, site, pfile in rows:
            got.setdefault(cid, {"pos": pos, "site": site, "patient": pfile})[handle] = self.dir / file
        answers = {}
        for c, q, v in self.store.query("SELECT case_id, question_id, value FROM answers WHERE reviewer = ?",
                                        (reviewer,)):
            answers.setdefault(c, {})[q] = v
        out = []
        for cid, g in sorted(got.items(), key=lambda kv: kv[1]["pos"]):
            ans = answers.get(cid, {})
            out.append(CaseView(reviewer, cid, g["pos"], g["site"], g["patient"], g["A"], g["B"], ans,
                                self._complete(ans)))
        return out

    def case_view(self, reviewer: str, case_id: str) -> CaseView:
        for cv in self.cases_for(reviewer):
            if cv.case_id == case_id:
                return cv
        raise InputError(f"no case '{case_id}' in this study", self.dir)

    def next_case(self, reviewer: str) -> CaseView | None:
        """Where the reviewer resumes: the first case in their order not fully answered."""
        for cv in self.cases_for(reviewer):
            if not cv.complete:
                return cv
        return None

    def status(self) -> dict:
        """Progress per reviewer; safe to show anyone (no arm information)."""
        revs = {}
        for r in self.reviewers():
            cvs = self.cases_for(r)
            nxt = next((cv.case_id for cv in cvs if not cv.complete), None)
            revs[r] = {"completed": sum(cv.complete for cv in cvs), "total": len(cvs), "next_case": nxt}
        return {"study_id": self.study_id, "questionnaire": self.questionnaire.version,
                "n_cases": len(self.case_ids()), "reviewers": revs, "unblinded": self.is_unblinded,
                "complete": all(v["completed"] == v["total"] for v in revs.values())}

    # -- write --------------------------------------------------------------------------
    def save_answer(self, reviewer: str, case_id: str, question_id: str, value) -> None:
        """Save one answer in its own transaction (on disk when this returns)."""
        self.save_answers(reviewer, case_id, {question_id: value})

    def save_answers(self, reviewer: str, case_id: str, answers: dict) -> None:
        """Save several answers of one case atomically (all or none)."""
        if self.is_unblinded:
            raise InputError("the study has been unblinded: answers are closed", self.dir)
        self._require_reviewer(reviewer)
        if not self.store.query("SELECT 1 FROM presentations WHERE reviewer = ? AND case_id = ?",
                                (reviewer, case_id)):
            raise InputError(f"no case '{case_id}' for reviewer '{reviewer}'", self.dir)
        clean = {q: self.questionnaire.validate_answer(q, v) for q, v in answers.items()}
        now = _now()
        with self.store.transaction("saving an answer") as db:
            for q, v in clean.items():
                db.execute("INSERT INTO answers VALUES (?, ?, ?, ?, ?) ON CONFLICT(reviewer, case_id, question_id) "
                           "DO UPDATE SET value = excluded.value, answered_utc = excluded.answered_utc",
                           (reviewer, case_id, q, v, now))
                db.execute("INSERT INTO answer_log (reviewer, case_id, question_id, value, answered_utc) "
                           "VALUES (?, ?, ?, ?, ?)", (reviewer, case_id, q, v, now))

    # -- after unblinding -----------------------------------------------------------------
    def arm_names(self) -> dict:
        raw = self.store.get_meta("arm_names")
        return json.loads(raw) if raw else {AUTOMATED: AUTOMATED, MANUAL: MANUAL}

    def automated_handles(self) -> dict:
        """``{(reviewer, case_id): "A" or "B"}``, the handle of the automated plan.

        Raises
        ------
        InputError
            Before unblinding.
        """
        if not self.is_unblinded:
            raise InputError("the study is still blinded: run the unblinding step first", self.dir)
        rows = self.store.query("SELECT p.reviewer, p.case_id, p.handle FROM presentations p "
                                "JOIN unblinded u ON u.token = p.token WHERE u.arm = ?", (AUTOMATED,))
        return {(r, c): h for r, c, h in rows}


def unblind(study_dir: str | Path, key_path: str | Path | None = None, force: bool = False) -> dict:
    """Reveal the key inside the study: copies token -> arm and arm names in; closes answering.

    Parameters
    ----------
    study_dir, key_path : path
    force : bool
        Unblind even though some reviewer has not finished (their missing answers stay missing).

    Returns
    -------
    dict
        ``{"study_id", "unblinded_utc", "arm_names", "incomplete": {reviewer: n_missing}}``.
    """
    study_dir = Path(study_dir)
    key_path = Path(key_path) if key_path else default_key_path(study_dir)
    with Store(key_path, kind="key", schema=KEY_SCHEMA, readonly=True) as key, ReviewStudy(study_dir) as st:
        _check_key(st, key)
        status = st.status()
        incomplete = {r: v["total"] - v["completed"] for r, v in status["reviewers"].items()
                      if v["completed"] < v["total"]}
        if st.is_unblinded:
            return {"study_id": st.study_id, "unblinded_utc": st.store.get_meta("unblinded_utc"),
                    "arm_names": st.arm_names(), "incomplete": incomplete, "already": True}
        if incomplete and not force:
            raise InputError("not every reviewer has finished (" + ", ".join(
                f"{r}: {n} case(s) open" for r, n in incomplete.items()) + "); unblind anyway with force",
                study_dir)
        rows = key.query("SELECT token, arm FROM sources")
        arm_names = key.get_meta("arm_names")
        when = _now()
        with st.store.transaction("unblinding") as db:
            db.executemany("INSERT INTO unblinded VALUES (?, ?)", rows)
            db.execute("INSERT INTO meta VALUES ('arm_names', ?)", (arm_names,))
            db.execute("INSERT INTO meta VALUES ('unblinded_utc', ?)", (when,))
        return {"study_id": st.study_id, "unblinded_utc": when, "arm_names": json.loads(arm_names),
                "incomplete": incomplete, "already": False}


def read_sources(key_path: str | Path) -> dict:
    """``{(case_id, arm): source path}`` from the key (coordinator only)."""
    with Store(key_path, kind="key", schema=KEY_SCHEMA, readonly=True) as key:
        return {(c, a): s for c, a, s in key.query("SELECT case_id, arm, source FROM sources")}

