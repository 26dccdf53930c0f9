"""Site protocol templates: prioritized goal lists from published protocols.

Templates are JSON files in ``resources/protocols/`` (built in) and in the user's
protocol folder (:func:`user_protocol_dir`; a user file with the same ``site`` replaces
the built-in one, so an institution can adapt any protocol). A template holds:

``format``      ``"openatp-protocol"``
``version``     the template's own version, e.g. ``"1.0"``
``site``        registry key (``hn``, ``lung``, ...); ``aliases`` other keys (``nasopharynx``)
``title``       what a planner sees
``prescriptions``  default ``[{"structure", "dose_gy", "fractions"}]``
``structures``  ``{name: {"role": TARGET|OAR|HELPER, "synonyms": [...]}}``
``goals``       GOALS-file entries (``docs/cli.md``) plus ``"cite"``: a key of ``citations``
``rings``       helper rings ``{"name", "target", "inner_mm", "outer_mm", "priority",
                "max_dose_pct"}``: the ring from inner to outer mm outside the target,
                minus all targets, gets a near-max (0.03 cc) goal at ``max_dose_pct`` % of
                the target's prescription
``helpers``     helper structures made by rules (:mod:`core.helper_structures`), each
                ``{"kind", "name", ...}`` with kind ``ring`` (``target``, ``inner_mm``,
                ``outer_mm``), ``oar_minus_ptv`` (``oar``, ``ptvs``, ``margin_mm``) or
                ``ptv_opt`` (``ptv``, ``oars``, ``margin_mm``: the PTV without the organs'
                PRVs), an optional ``goal`` (a GOALS entry without ``structure``; ``dose_pct``
                of the target's prescription may replace ``dose_gy`` for ``ring`` and
                ``ptv_opt``) and ``cite``. Names listed under ``ptvs`` / ``oars`` that a
                patient lacks are left out; a helper identical to its source (nothing
                overlaps) or empty is not made. Helper goals are steering goals
                (``control``), so a predicted dose never rewrites them
``citations``   ``{key: reference}``

Structure names are matched to the patient's through :func:`canonical_name`, which
makes "Parotid_L", "L Parotid", "LeftParotid", "Lt_Parotid" and "PAROTID_LT" the same
name, plus each structure's explicit synonyms.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.errors import InputError
from core.goals.goal import ClinicalGoal, GoalKind
from core.paths import resource_dir
from core.paths import user_data_dir as paths_user_data_dir

FORMAT = "openatp-protocol"
_ROLES = ("TARGET", "OAR", "HELPER", "EXTERNAL")
_TOP_KEYS = {"format", "version", "site", "aliases", "title", "prescriptions", "structures", "goals", "rings",
             "helpers", "citations", "description"}
_RING_KEYS = {"name", "target", "inner_mm", "outer_mm", "priority", "max_dose_pct", "cite"}
#: helper kind -> (required keys, optional keys, the key naming the structure a dose_pct refers to)
_HELPER_KEYS = {
    "ring": ({"target", "inner_mm", "outer_mm"}, set(), "target"),
    "oar_minus_ptv": ({"oar", "ptvs"}, {"margin_mm"}, None),
    "ptv_opt": ({"ptv", "oars"}, {"margin_mm"}, "ptv"),
}
_SIDE = {"l": "left", "lt": "left", "left": "left", "r": "right", "rt": "right", "right": "right"}
_FILLER = {"gy", "cgy", "the", "and", "opt"}


def builtin_protocol_dir() -> Path:
    """``resources/protocols`` of the installed package."""
    return resource_dir() / "protocols"


def user_data_dir() -> Path:
    """The per-user OpenATP folder (:func:`core.paths.user_data_dir`: ``$OPENATP_USER_DIR``, else
    the platform's data folder, never inside the installation)."""
    return paths_user_data_dir()


def user_protocol_dir() -> Path:
    """Where institutions put their own templates: ``<user_data_dir>/protocols``."""
    return user_data_dir() / "protocols"


def canonical_name(name: str) -> str:
    """A spelling-independent key for a structure name.

    CamelCase and letter/digit boundaries are split, case and punctuation dropped, side
    words unified (l, lt, left -> left) and the words sorted, so word order does not matter.
    """
    s = re.sub(r"([a-z])([A-Z])", r"\1 \2", str(name))
    s = re.sub(r"([A-Za-z])(\d)", r"\1 \2", s)
    s = re.sub(r"(\d)([A-Za-z])", r"\1 \2", s)
    tokens = re.findall(r"[a-z]+|\d+(?:\.\d+)?", s.lower())
    tokens = [_SIDE.get(t, t) for t in tokens if t not in _FILLER]
    return " ".join(sorted(tokens))


@dataclass(frozen=True)
class StructureSpec:
    name: str
    role: str = "OAR"
    synonyms: tuple = ()

    def keys(self) -> set:
        return {canonical_name(self.name)} | {canonical_name(s) for s in self.synonyms}


@dataclass(frozen=True)
class RingRule:
    """A helper ring from ``inner_mm`` to ``outer_mm`` outside ``target`` (minus all targets)."""

    name: str
    target: str
    inner_mm: float
    outer_mm: float
    priority: int
    max_dose_pct: float
    cite: str = ""

    def __post_init__(self):
        if not 0 <= self.inner_mm < self.outer_mm:
            raise InputError(f"ring '{self.name}': needs 0 <= inner_mm < outer_mm")
        if not 0 < self.max_dose_pct <= 120:
            raise InputError(f"ring '{self.name}': max_dose_pct must lie in 0 ... 120 %")
        if int(self.priority) != self.priority or self.priority < 1:
            raise InputError(f"ring '{self.name}': priority must be a whole number >= 1")

    def goal(self, rx_gy: float, structure_name: str | None = None) -> ClinicalGoal:
        return ClinicalGoal(int(self.priority), structure_name or self.name, GoalKind.MAX_DOSE_AT_VOLUME,
                            dose_gy=round(self.max_dose_pct / 100.0 * rx_gy, 3), volume_cc=0.03,
                            note=f"ring {self.inner_mm:g}-{self.outer_mm:g} mm around {self.target}: "
                                 f"{self.max_dose_pct:g} % of {rx_gy:g} Gy")


@dataclass(frozen=True)
class HelperSpec:
    """A template's helper-structure rule in template structure names (see module docstring).

    ``params`` holds the kind's keys (``target`` / ``oar`` / ``ptv`` a name, ``ptvs`` /
    ``oars`` tuples of names, margins in mm); ``goal`` the GOALS entry without
    ``structure`` (``dose_pct`` allowed for ``ring`` and ``ptv_opt``), or None.
    """

    kind: str
    name: str
    params: tuple                 # sorted (key, value) pairs
    goal: tuple | None = None     # sorted (key, value) pairs of the goal entry
    cite: str = ""

    @property
    def p(self) -> dict:
        return dict(self.params)

    def sources(self) -> list[str]:
        """Template structure names this helper reads (the main one first)."""
        p = self.p
        if self.kind == "ring":
            return [p["target"]]
        if self.kind == "oar_minus_ptv":
            return [p["oar"], *p["ptvs"]]
        return [p["ptv"], *p["oars"]]

    def rule(self, match: dict):
        """The :mod:`core.helper_structures` rule for a patient whose names ``match`` maps
        (template name -> patient name), or ``None`` with a reason when the patient lacks
        the main structure or every structure to subtract. Returns ``(rule, note)``."""
        from core import helper_structures as hs

        p = self.p
        main = self.sources()[0]
        if main not in match:
            return None, f"helper '{self.name}': the patient has no '{main}'; not made"
        if self.kind == "ring":
            return hs.RingRule(self.name, match[main], p["inner_mm"], p["outer_mm"]), ""
        others = [match[s] for s in self.sources()[1:] if s in match]
        if not others:
            return None, f"helper '{self.name}': none of {', '.join(self.sources()[1:])} present; not made"
        margin = p.get("margin_mm", 0.0)
        if self.kind == "oar_minus_ptv":
            return hs.OarMinusPtvRule(self.name, match[main], tuple(others), margin), ""
        return hs.PtvMinusOarRule(self.name, match[main], tuple(others), margin), ""

    def goal_for(self, rx_gy: float | None) -> ClinicalGoal | None:
        """The helper's goal (``control``) with ``dose_pct`` turned into Gy of ``rx_gy``."""
        if self.goal is None:
            return None
        d = dict(self.goal)
        pct = d.pop("dose_pct", None)
        note = f"helper {self.kind} ({self.name})"
        if pct is not None:
            if rx_gy is None:
                return None
            d["dose_gy"] = round(float(pct) / 100.0 * rx_gy, 3)
            note += f": {float(pct):g} % of {rx_gy:g} Gy"
        d.update(structure=self.name, control=True)
        d.setdefault("note", note)
        return ClinicalGoal.from_dict(d)


def _parse_helper(h, structures: dict, citations: dict) -> HelperSpec:
    """Validate one ``helpers`` entry (raises InputError without the file name)."""
    if not isinstance(h, dict):
        raise InputError(f"a helper is a JSON object, got {h!r}")
    kind = h.get("kind")
    name = str(h.get("name", "")).strip()
    if kind not in _HELPER_KEYS:
        raise InputError(f"helper '{name or '?'}': kind must be one of {', '.join(_HELPER_KEYS)}, got {kind!r}")
    if not name:
        raise InputError(f"a {kind} helper needs a name")
    required, optional, rx_key = _HELPER_KEYS[kind]
    keys = set(h) - {"kind", "name", "goal", "cite"}
    if not required <= keys or keys - required - optional:
        raise InputError(f"helper '{name}' ({kind}) takes {', '.join(sorted(required))}"
                         f"{' and optional ' + ', '.join(sorted(optional)) if optional else ''}, got {sorted(keys)}")
    params: dict = {}
    for k in sorted(keys):
        v = h[k]
        if k in ("ptvs", "oars"):
            if isinstance(v, str):
                v = [v]
            if not isinstance(v, list) or not v or not all(isinstance(x, str) for x in v):
                raise InputError(f"helper '{name}': {k} must be a non-empty list of structure names")
            v = tuple(v)
        elif k in ("target", "oar", "ptv"):
            v = str(v)
        else:
            try:
                v = float(v)
            except (TypeError, ValueError):
                raise InputError(f"helper '{name}': {k} must be a number of mm, got {v!r}") from None
            if not v >= 0:
                raise InputError(f"helper '{name}': {k} must not be negative")
        params[k] = v
    want_role = {"target": "TARGET", "ptv": "TARGET", "oar": "OAR", "ptvs": "TARGET", "oars": "OAR"}
    for k, role in want_role.items():
        for s in (params[k] if isinstance(params.get(k), tuple) else [params[k]] if k in params else []):
            if s not in structures:
                raise InputError(f"helper '{name}': '{s}' is not listed under 'structures'")
            if structures[s].role != role:
                raise InputError(f"helper '{name}': '{s}' is not an {role} of this template")
    if kind == "ring" and not params["inner_mm"] < params["outer_mm"]:
        raise InputError(f"helper '{name}': needs inner_mm < outer_mm")
    cite = str(h.get("cite", ""))
    if cite and cite not in citations:
        raise InputError(f"helper '{name}': citation '{cite}' is not in 'citations'")
    goal = h.get("goal")
    if goal is not None:
        if not isinstance(goal, dict) or "structure" in goal:
            raise InputError(f"helper '{name}': goal is a GOALS entry without 'structure'")
        g = dict(goal)
        pct = g.pop("dose_pct", None)
        if pct is not None:
            if rx_key is None:
                raise InputError(f"helper '{name}': dose_pct needs a target; give dose_gy")
            if "dose_gy" in g:
                raise InputError(f"helper '{name}': give dose_pct or dose_gy, not both")
            if not (isinstance(pct, (int, float)) and 0 < pct <= 120):
                raise InputError(f"helper '{name}': dose_pct must lie in 0 ... 120 %")
            g["dose_gy"] = float(pct)  # a stand-in value, only to validate the rest of the goal
        try:
            ClinicalGoal.from_dict({**g, "structure": name})
        except InputError as exc:
            raise InputError(f"helper '{name}': goal: {exc.message}") from None
        goal = tuple(sorted(goal.items()))
    return HelperSpec(kind, name, tuple(sorted(params.items())), goal, cite)


@dataclass(frozen=True)
class ProtocolTemplate:
    """A validated site template (see module docstring for the file format)."""

    site: str
    version: str
    title: str
    aliases: tuple
    prescriptions: tuple          # of dict(structure, dose_gy, fractions)
    structures: dict              # name -> StructureSpec
    goals: tuple                  # of ClinicalGoal (template structure names)
    rings: tuple                  # of RingRule
    citations: dict
    path: str = ""
    cites: tuple = field(default=())  # citation key per goal
    helpers: tuple = field(default=())  # of HelperSpec

    @classmethod
    def from_dict(cls, d: dict, path: str | Path = "") -> "ProtocolTemplate":
        """Validate a parsed template; every problem is an :class:`InputError` naming the file."""
        where = path or "protocol template"

        def bad(msg):
            return InputError(msg, where)

        if not isinstance(d, dict):
            raise bad("a protocol template is a JSON object")
        if d.get("format") != FORMAT:
            raise bad(f"'format' must be \"{FORMAT}\"")
        unknown = set(d) - _TOP_KEYS
        if unknown:
            raise bad(f"unknown key(s) {', '.join(sorted(unknown))}")
        for key in ("version", "site", "title", "structures", "goals"):
            if key not in d:
                raise bad(f"'{key}' is missing")
        if not re.fullmatch(r"\d+(\.\d+)*", str(d["version"])):
            raise bad(f"version must look like 1.0, got {d['version']!r}")
        site = str(d["site"]).strip().lower()
        if not re.fullmatch(r"[a-z0-9_]+", site):
            raise bad(f"site key must be lower-case letters, digits or _, got {d['site']!r}")
        citations = d.get("citations", {})
        if not isinstance(citations, dict):
            raise bad("'citations' must map keys to references")
        structures = {}
        if not isinstance(d["structures"], dict) or not d["structures"]:
            raise bad("'structures' must map names to {role, synonyms}")
        for name, spec in d["structures"].items():
            spec = spec or {}
            role = str(spec.get("role", "OAR")).upper()
            if role not in _ROLES:
                raise bad(f"structure '{name}': role must be one of {', '.join(_ROLES)}")
            syn = spec.get("synonyms", [])
            if not isinstance(syn, list) or not all(isinstance(s, str) for s in syn):
                raise bad(f"structure '{name}': synonyms must be a list of names")
            structures[name] = StructureSpec(name, role, tuple(syn))
        keys: dict = {}
        for s in structures.values():
            for k in s.keys():
                if k in keys and keys[k] != s.name:
                    raise bad(f"synonym clash: '{k}' names both '{keys[k]}' and '{s.name}'")
                keys[k] = s.name
        rings = []
        for r in d.get("rings", []):
            if not isinstance(r, dict) or set(r) - _RING_KEYS or not {"name", "target", "inner_mm", "outer_mm",
                                                                       "priority", "max_dose_pct"} <= set(r):
                raise bad(f"a ring needs exactly {', '.join(sorted(_RING_KEYS - {'cite'}))} (and optional cite), "
                          f"got {r}")
            if r["target"] not in structures or structures[r["target"]].role != "TARGET":
                raise bad(f"ring '{r['name']}': '{r['target']}' is not a target of this template")
            try:
                rings.append(RingRule(r["name"], r["target"], float(r["inner_mm"]), float(r["outer_mm"]),
                                      int(r["priority"]), float(r["max_dose_pct"]), str(r.get("cite", ""))))
            except InputError as exc:
                raise bad(exc.message) from None
        ring_names = {r.name for r in rings}
        helpers = []
        if not isinstance(d.get("helpers", []), list):
            raise bad("'helpers' must be a list")
        for h in d.get("helpers", []):
            try:
                helpers.append(_parse_helper(h, structures, citations))
            except InputError as exc:
                raise bad(exc.message) from None
        seen = set(structures) | ring_names
        for h in helpers:
            # a helper named like a template structure would be matched to it (canonical
            # names drop "opt", so "PTV70_OPT" is PTV70 to the name matcher)
            if h.name in seen or canonical_name(h.name) in keys:
                raise bad(f"helper '{h.name}': the name clashes with a structure, ring or helper of this template")
            seen.add(h.name)
        goals, cites = [], []
        if not isinstance(d["goals"], list) or not d["goals"]:
            raise bad("'goals' must be a non-empty list")
        for i, gd in enumerate(d["goals"]):
            gd = dict(gd)
            cite = gd.pop("cite", "")
            if cite and cite not in citations:
                raise bad(f"goal #{i + 1}: citation '{cite}' is not in 'citations'")
            try:
                g = ClinicalGoal.from_dict(gd)
            except InputError as exc:
                raise bad(f"goal #{i + 1}: {exc.message}") from None
            if g.structure not in structures and g.structure not in ring_names:
                raise bad(f"goal #{i + 1}: structure '{g.structure}' is not listed under 'structures'")
            if g.control:
                raise bad(f"goal #{i + 1}: control goals come from the planner, not from a template")
            if cite and not g.note:
                from dataclasses import replace

                g = replace(g, note=str(citations[cite]).split(":")[0][:80])
            goals.append(g)
            cites.append(cite)
        rx = []
        for p in d.get("prescriptions", []):
            if not isinstance(p, dict) or p.get("structure") not in structures:
                raise bad(f"prescription {p}: structure must be one of the template's structures")
            from core.patient import Prescription

            try:
                Prescription(p["structure"], float(p["dose_gy"]), int(p.get("fractions", 1)))
            except (InputError, KeyError, TypeError, ValueError) as exc:
                raise bad(f"prescription {p}: {exc}") from None
            rx.append({"structure": p["structure"], "dose_gy": float(p["dose_gy"]),
                       "fractions": int(p.get("fractions", 1))})
        aliases = tuple(str(a).lower() for a in d.get("aliases", []))
        return cls(site, str(d["version"]), str(d["title"]), aliases, tuple(rx), structures, tuple(goals),
                   tuple(rings), dict(citations), str(path), tuple(cites), tuple(helpers))

    @classmethod
    def from_file(cls, path: str | Path) -> "ProtocolTemplate":
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError("protocol template not found", path) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"not a valid JSON protocol template ({exc})", path) from None
        return cls.from_dict(d, path)

    # -- structure matching ------------------------------------------------------------
    def match_structures(self, names) -> dict:
        """Template structure name -> the patient's structure name, for those found.

        An exact name wins; otherwise the canonical forms of the name and its synonyms
        are compared with the canonical forms of the patient's names.
        """
        names = list(names)
        by_key: dict = {}
        for n in names:
            by_key.setdefault(canonical_name(n), n)
        out = {}
        for tname, spec in self.structures.items():
            if tname in names:
                out[tname] = tname
                continue
            for k in [canonical_name(tname)] + [canonical_name(s) for s in spec.synonyms]:
                if k in by_key:
                    out[tname] = by_key[k]
                    break
        return out

    def prescription_for(self, structure: str) -> float | None:
        for p in self.prescriptions:
            if p["structure"] == structure:
                return p["dose_gy"]
        return None

    def goals_for(self, structure_names, rx_by_target: dict | None = None) -> tuple[list, list]:
        """The template's goals renamed to the patient's structures.

        Parameters
        ----------
        structure_names : iterable of str
            The patient's structure names (ring names are accepted as they are).
        rx_by_target : dict, optional
            Patient prescription per *patient* target name; ring goals scale with it.

        Returns
        -------
        goals : list of ClinicalGoal
        warnings : list of str
            One per goal dropped because its structure is missing.
        """
        from dataclasses import replace

        names = list(structure_names)
        match = self.match_structures(names)
        goals, warnings = [], []
        ring_by_name = {r.name: r for r in self.rings}
        for g in self.goals:
            if g.structure in ring_by_name:
                continue
            pname = match.get(g.structure)
            if pname is None:
                warnings.append(f"{self.site} template: no structure matches '{g.structure}'; "
                                f"goal '{g.label}' left out")
                continue
            goals.append(replace(g, structure=pname))
        for r in self.rings:
            tname = match.get(r.target)
            if tname is None:
                continue
            rx = (rx_by_target or {}).get(tname) or self.prescription_for(r.target)
            if rx is None:
                warnings.append(f"ring '{r.name}': no prescription for '{r.target}'; ring goal left out")
                continue
            goals.append(r.goal(rx))
        return goals, warnings


def _scan(folder: Path) -> dict:
    out = {}
    if folder.is_dir():
        for p in sorted(folder.glob("*.json")):
            t = ProtocolTemplate.from_file(p)
            out[t.site] = t
    return out


def available_templates(include_user: bool = True) -> dict:
    """Site key -> ProtocolTemplate; user templates replace built-in ones of the same site."""
    out = _scan(builtin_protocol_dir())
    if include_user:
        out.update(_scan(user_protocol_dir()))
    return out


def available_sites() -> list[str]:
    return sorted(available_templates())


def load_template(site: str) -> ProtocolTemplate:
    """The template for a site key or alias (``hn``, ``nasopharynx``, ``lung``, ...)."""
    key = str(site).strip().lower()
    templates = available_templates()
    if key in templates:
        return templates[key]
    for t in templates.values():
        if key in t.aliases:
            return t
    raise InputError(f"no protocol template for site '{site}' (have: {', '.join(sorted(templates))})")


def add_ring_structures(patient, template: ProtocolTemplate) -> list[str]:
    """Add the template's helper rings to ``patient`` (role HELPER, ``rule`` kept).

    Each ring is the shell from ``inner_mm`` to ``outer_mm`` outside its target, limited
    to the body and kept ``inner_mm`` from *every* target: a ring of a low-dose target runs
    into the fall-off of a higher one otherwise, where its goal cannot be met (demo case:
    Ring_PTV56_10_30mm touched PTV70, D0.03cc 75 Gy against a goal of 70). Existing
    structures of the same name are replaced only when they were made by a rule (so a
    hand-drawn ring is kept).
    Returns the names added.
    """
    import numpy as np

    from core.optimization.conformity import distance_outside_mm
    from core.structures import ring
    from core.patient import Structure, StructureRole

    match = template.match_structures(patient.structures)
    all_targets = np.zeros(patient.grid.shape, dtype=bool)
    for s in patient.targets:
        all_targets |= s.mask
    # one distance map for every ring: each keeps its own inner distance from all targets
    dist_targets = distance_outside_mm(all_targets, patient.grid) if template.rings and all_targets.any() else None
    try:
        body = patient.external_mask()
    except InputError:
        body = None
    added = []
    for r in template.rings:
        tname = match.get(r.target)
        if tname is None or patient.structures[tname].is_empty:
            continue
        old = patient.structures.get(r.name)
        if old is not None and old.rule is None:
            continue
        near_targets = all_targets if dist_targets is None else dist_targets <= r.inner_mm
        exclude = near_targets if body is None else (near_targets | ~body)
        mask = ring(patient.structures[tname].mask, patient.grid, r.inner_mm, r.outer_mm) & ~exclude
        rule = {"kind": "ring", "source": tname, "inner_mm": r.inner_mm, "outer_mm": r.outer_mm,
                "exclude": "targets"}
        patient.add_structure(Structure(r.name, mask, StructureRole.HELPER, (200, 200, 200), True, rule),
                              replace=True)
        added.append(r.name)
    return added


@dataclass(frozen=True)
class TemplateHelpers:
    """What :func:`add_template_helpers` did: structures made, their goals, notes."""

    structures: tuple = ()        # names of the helper structures added (or rebuilt)
    goals: tuple = ()             # their ClinicalGoals (control), in the patient's names
    notes: tuple = ()             # helpers not made, and why


def add_template_helpers(patient, site: str | ProtocolTemplate) -> TemplateHelpers:
    """Make the template's ``helpers`` on ``patient`` (role HELPER, rule kept for regeneration).

    Sources are matched to the patient's names as goals are. A helper is not made (a note
    says why) when the patient lacks its main structure or everything to subtract, when it
    would be empty, when it would equal its source (nothing overlaps, so it adds nothing),
    or when a structure of that name exists that no rule made (a planner's own is kept).
    A rule-made one of that name is rebuilt. Helper goals get their ``dose_pct`` from the
    patient's prescription for the helper's target (else the template's).

    Call after the patient is loaded and before the goals are optimized, e.g. in
    :func:`core.pipeline.plan_goals`::

        helpers = add_template_helpers(patient, site)
        goals = goals + list(helpers.goals)
    """
    from core import helper_structures as hs

    t = site if isinstance(site, ProtocolTemplate) else load_template(site)
    match = {k: v for k, v in t.match_structures(patient.structures).items()
             if not patient.structures[v].is_empty}
    rx = {p.structure: p.dose_gy for p in patient.prescriptions}
    made, goals, notes = [], [], []
    for h in t.helpers:
        rule, why = h.rule(match)
        if rule is None:
            notes.append(why)
            continue
        old = patient.structures.get(h.name)
        if old is not None and not isinstance(old.rule, dict):
            notes.append(f"helper '{h.name}': the patient has its own structure of that name; kept it")
            continue
        try:
            mask = hs.build_mask(patient, rule)
        except InputError as exc:
            notes.append(f"{exc.message}; not made")
            continue
        src = patient.structures[rule.source_names(patient)[0]].mask
        if h.kind != "ring" and np.array_equal(mask, src):
            notes.append(f"helper '{h.name}': nothing overlaps '{rule.source_names(patient)[0]}'; not made "
                         f"(it would equal it)")
            continue
        hs.make_helper(patient, rule)
        made.append(h.name)
        main = h.sources()[0]
        g = h.goal_for(rx.get(match[main]) or t.prescription_for(main))
        if g is not None:
            goals.append(g)
    return TemplateHelpers(tuple(made), tuple(goals), tuple(notes))


def goals_for_patient(patient, site: str | ProtocolTemplate, add_rings: bool = True,
                      add_helpers: bool = False) -> tuple[list, list]:
    """The site template's goals for ``patient`` (rings, and helpers with their goals,
    added to the patient when asked).

    Returns ``(goals, warnings)``.
    """
    t = site if isinstance(site, ProtocolTemplate) else load_template(site)
    if add_rings:
        add_ring_structures(patient, t)
    helpers = add_template_helpers(patient, t) if add_helpers else TemplateHelpers()
    rx = {p.structure: p.dose_gy for p in patient.prescriptions}
    present = [n for n, s in patient.structures.items() if not s.is_empty]
    for n, s in patient.structures.items():
        if s.is_empty and t.match_structures([n]):
            warnings_empty = f"structure '{n}' is empty: its template goals are left out"
            rx.pop(n, None)
            if warnings_empty not in patient.warnings:
                patient.warnings.append(warnings_empty)
    goals, warnings = t.goals_for(present, rx)
    if not add_rings:
        goals = [g for g in goals if g.structure in patient.structures]
    return goals + list(helpers.goals), warnings + list(helpers.notes)


def template_from_goals(goals, site: str, title: str, *, roles: dict | None = None,
                        base: ProtocolTemplate | None = None, prescriptions=None,
                        version: str = "1.0") -> tuple[dict, list]:
    """A protocol-template document (this module's format) holding ``goals``.

    This is how a planner's edited goal list becomes an institution template.

    Parameters
    ----------
    goals : sequence of ClinicalGoal
        Structure names as in the patient the goals were edited for.
    site : str
        The new template's site key (lower-case letters, digits, ``_``). A user template
        with the key of a built-in one replaces it (see the module docstring).
    title : str
    roles : dict, optional
        Patient structure name -> role (``TARGET``, ``OAR``, ``HELPER``, ``EXTERNAL``) for
        structures ``base`` does not know; default ``OAR``.
    base : ProtocolTemplate, optional
        The template the goals came from: its structure names and synonyms, citations,
        aliases (same site only) and ring rules are kept, and patient names are written
        as the template's names, so the new template matches other patients the same way.
        A ring's near-max goal updates the ring's ``max_dose_pct`` and priority; a ring
        without a goal in ``goals`` is dropped.
    prescriptions : iterable of core.patient.Prescription or dict, optional
        Default prescriptions; ``base``'s when not given.

    Returns
    -------
    doc : dict
        Validated (``ProtocolTemplate.from_dict`` accepts it).
    warnings : list of str
        Goals that could not be kept, in a planner's words.
    """
    goals = list(goals)
    if not goals:
        raise InputError("the goal list is empty: nothing to save as a template")
    site = str(site).strip().lower()
    if not re.fullmatch(r"[a-z0-9_]+", site):
        raise InputError(f"a template's site key uses lower-case letters, digits or _ only, got {site!r}")
    title = str(title).strip() or site
    roles = {k: str(v).upper() for k, v in (roles or {}).items()}
    warnings: list = []
    rings = {r.name: r for r in (base.rings if base else ())}
    names = sorted({g.structure for g in goals if g.structure not in rings})
    to_template = {}
    if base is not None:
        to_template = {pname: tname for tname, pname in base.match_structures(names).items()}
    structures: dict = {}
    if base is not None:
        for s in base.structures.values():
            structures[s.name] = {"role": s.role, "synonyms": list(s.synonyms)}
    for n in names:
        tname = to_template.get(n, n)
        if tname not in structures:
            role = roles.get(n, "OAR")
            structures[tname] = {"role": role if role in _ROLES else "OAR", "synonyms": []}
    rx_list = []
    if prescriptions is None:
        rx_list = [dict(p) for p in (base.prescriptions if base else ())]
    else:
        for p in prescriptions:
            d = p if isinstance(p, dict) else {"structure": p.structure, "dose_gy": p.dose_gy,
                                                "fractions": p.fractions}
            tname = to_template.get(d["structure"], d["structure"])
            if tname not in structures:
                continue  # a prescription on a structure no goal names: not part of this template
            rx_list.append({"structure": tname, "dose_gy": float(d["dose_gy"]), "fractions": int(d["fractions"])})
    rx_by_name = {p["structure"]: p["dose_gy"] for p in rx_list}
    cites = {}
    if base is not None:
        for g, c in zip(base.goals, base.cites):
            if c:
                cites[(g.structure, g.kind, g.metric)] = c
    out_goals, out_rings = [], []
    for g in goals:
        ring = rings.get(g.structure)
        if ring is not None:
            rx = rx_by_name.get(ring.target)
            if g.kind is GoalKind.MAX_DOSE_AT_VOLUME and g.volume_cc is not None and rx:
                d = {"name": ring.name, "target": ring.target, "inner_mm": ring.inner_mm, "outer_mm": ring.outer_mm,
                     "priority": g.priority, "max_dose_pct": round(100.0 * g.dose_gy / rx, 4)}
                if ring.cite:
                    d["cite"] = ring.cite
                out_rings.append(d)
            else:
                warnings.append(f"'{g.label}': a ring's goal is saved as its rule (near-max dose in % of "
                                f"{ring.target}'s prescription); this goal is left out")
            continue
        d = g.to_dict()
        d["structure"] = to_template.get(g.structure, g.structure)
        d.pop("control", None)  # templates hold protocol goals; control goals are per plan
        c = cites.get((d["structure"], g.kind, g.metric))
        if c:
            d["cite"] = c
        out_goals.append(d)
    if not out_goals:
        raise InputError("a template needs at least one goal on a structure (not only ring goals)")
    doc = {"format": FORMAT, "version": str(version), "site": site, "title": title,
           "aliases": list(base.aliases) if base is not None and base.site == site else [],
           "description": "Saved from an edited goal list" + (f", based on '{base.site}' {base.version}"
                                                               if base is not None else ""),
           "prescriptions": rx_list, "structures": structures, "goals": out_goals, "rings": out_rings,
           "citations": dict(base.citations) if base is not None else {}}
    ProtocolTemplate.from_dict(doc, f"template '{site}'")  # refuse to write what could not be read back
    return doc, warnings


def save_user_template(doc: dict, folder: str | Path | None = None, overwrite: bool = False) -> Path:
    """Write a template document (:func:`template_from_goals`) into the user's protocol folder.

    The file is ``<folder>/<site>.json`` (default folder :func:`user_protocol_dir`),
    written atomically. An existing file is replaced only with ``overwrite``.
    """
    from core.io.atomic import atomic_write_text

    t = ProtocolTemplate.from_dict(doc, "template")
    folder = Path(folder) if folder is not None else user_protocol_dir()
    path = folder / f"{t.site}.json"
    if path.exists() and not overwrite:
        raise InputError(f"an institution template for site '{t.site}' already exists; choose another "
                         "site key or confirm replacing it", path)
    atomic_write_text(path, json.dumps(doc, indent=2) + "\n")
    return path
