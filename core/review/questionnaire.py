"""The per-case questionnaire of a blinded review, as a versioned schema.

A questionnaire is data (JSON), stored inside each study, so a study can define its
own. Schema ``format`` 1::

    {"format": 1, "version": "published-v1", "title": "...",
     "options": ["agree", "disagree", "cannot_judge"],
     "questions": [{"id": "acceptable_a", "text": "Plan A is clinically acceptable.",
                    "kind": "acceptable", "plan": "A"}, ...]}

``kind`` says how the aggregation scores a question:

``acceptable`` (with ``plan`` "A" or "B")
    "Plan X is clinically acceptable": agree = acceptable, disagree = not acceptable,
    cannot judge = **not acceptable** (the publication gives no rule for this case; we
    count it conservatively, so an automated plan is never accepted by default).
``prefer``
    "Plan A is preferable to Plan B": agree = A preferred, disagree = B preferred,
    cannot judge = **the automated plan is preferred if that reviewer found it
    acceptable**, otherwise the manual plan (published rule).
``generated``
    "Plan A was generated automatically": agree = the reviewer names A as the automated
    plan, disagree = names B, cannot judge = **a misidentification** (published rule).
``likert``
    Any further agree/disagree/cannot-judge statement; answers are stored and counted.
``text``
    Free text (the comment); never required.

Only ``format`` 1 is understood; a study or file with another format, or an unknown
built-in version name, is refused with :class:`InputError`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from core.errors import InputError

FORMAT = 1
AGREE, DISAGREE, CANNOT_JUDGE = "agree", "disagree", "cannot_judge"
LIKERT3 = (AGREE, DISAGREE, CANNOT_JUDGE)
KINDS = ("acceptable", "prefer", "generated", "likert", "text")
MAX_COMMENT_CHARS = 4000

_PUBLISHED_V1 = {
    "format": FORMAT,
    "version": "published-v1",
    "title": "Blinded side-by-side plan review (3-point Likert, published protocol)",
    "options": list(LIKERT3),
    "questions": [
        {"id": "acceptable_a", "kind": "acceptable", "plan": "A",
         "text": "Plan A is clinically acceptable."},
        {"id": "acceptable_b", "kind": "acceptable", "plan": "B",
         "text": "Plan B is clinically acceptable."},
        {"id": "prefer_a", "kind": "prefer",
         "text": "Plan A is preferable to Plan B."},
        {"id": "generated_a", "kind": "generated",
         "text": "Plan A was generated automatically."},
        {"id": "comment", "kind": "text", "text": "Comment (optional)."},
    ],
}

#: Built-in questionnaires by version name.
BUILTIN = {"published-v1": _PUBLISHED_V1}
DEFAULT_VERSION = "published-v1"


@dataclass(frozen=True)
class Question:
    """One statement (or the comment field) of the questionnaire."""

    id: str
    text: str
    kind: str
    plan: str | None = None
    required: bool = True

    def __post_init__(self):
        if not self.id or not self.id.replace("_", "").isalnum():
            raise InputError(f"question id '{self.id}' must be letters, digits and _")
        if self.kind not in KINDS:
            raise InputError(f"question '{self.id}': kind '{self.kind}' is not one of {', '.join(KINDS)}")
        if self.kind == "acceptable" and self.plan not in ("A", "B"):
            raise InputError(f"question '{self.id}': an acceptability statement needs plan 'A' or 'B'")
        if self.kind == "text":
            object.__setattr__(self, "required", False)


@dataclass(frozen=True)
class Questionnaire:
    """A validated questionnaire schema (see module docstring)."""

    version: str
    title: str
    options: tuple
    questions: tuple

    def __post_init__(self):
        if not self.version:
            raise InputError("a questionnaire needs a version name")
        ids = [q.id for q in self.questions]
        if len(ids) != len(set(ids)):
            raise InputError(f"questionnaire '{self.version}': question ids repeat")
        if not self.questions:
            raise InputError(f"questionnaire '{self.version}' has no questions")
        if tuple(self.options) != LIKERT3:
            raise InputError(f"questionnaire '{self.version}': options must be {list(LIKERT3)}")
        for kind in ("prefer", "generated"):
            if sum(q.kind == kind for q in self.questions) > 1:
                raise InputError(f"questionnaire '{self.version}': at most one '{kind}' statement")

    @classmethod
    def from_dict(cls, d: dict, source: str | None = None) -> "Questionnaire":
        if not isinstance(d, dict):
            raise InputError("a questionnaire must be a JSON object", source)
        fmt = d.get("format")
        if fmt != FORMAT:
            raise InputError(f"unknown questionnaire format {fmt!r} (this version of OpenATP reads format {FORMAT})",
                             source)
        try:
            qs = tuple(Question(id=str(q["id"]), text=str(q["text"]), kind=str(q["kind"]),
                                plan=q.get("plan"), required=bool(q.get("required", True)))
                       for q in d["questions"])
            return cls(version=str(d["version"]), title=str(d.get("title", "")),
                       options=tuple(d.get("options", LIKERT3)), questions=qs)
        except (KeyError, TypeError) as exc:
            raise InputError(f"questionnaire is missing a field ({exc})", source) from None

    @classmethod
    def from_file(cls, path: str | Path) -> "Questionnaire":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError("questionnaire file not found", path) from None
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read questionnaire ({exc})", path) from None
        return cls.from_dict(data, str(path))

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": self.version, "title": self.title,
                "options": list(self.options),
                "questions": [{k: v for k, v in (("id", q.id), ("kind", q.kind), ("text", q.text),
                                                ("plan", q.plan), ("required", q.required)) if v is not None}
                              for q in self.questions]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def question(self, qid: str) -> Question:
        for q in self.questions:
            if q.id == qid:
                return q
        raise InputError(f"questionnaire '{self.version}' has no question '{qid}' "
                         f"(have: {', '.join(q.id for q in self.questions)})")

    @property
    def required_ids(self) -> tuple:
        return tuple(q.id for q in self.questions if q.required)

    def by_kind(self, kind: str, plan: str | None = None) -> Question | None:
        for q in self.questions:
            if q.kind == kind and (plan is None or q.plan == plan):
                return q
        return None

    def validate_answer(self, qid: str, value) -> str:
        """The stored form of an answer; raises :class:`InputError` for a value the question does not take."""
        q = self.question(qid)
        if q.kind == "text":
            text = "" if value is None else str(value)
            if len(text) > MAX_COMMENT_CHARS:
                raise InputError(f"comment is longer than {MAX_COMMENT_CHARS} characters")
            return text
        v = str(value).strip().lower().replace(" ", "_").replace("'", "")
        if v == "cannot_judge" or v in ("cannotjudge", "cant_judge", "cannot"):
            v = CANNOT_JUDGE
        if v not in self.options:
            raise InputError(f"answer '{value}' to '{qid}' is not one of {', '.join(self.options)}")
        return v


def get_questionnaire(spec: str | Path | None = None) -> Questionnaire:
    """A built-in questionnaire by version name, or one read from a JSON file.

    Raises
    ------
    InputError
        Unknown version name (lists the known ones), unreadable file, unknown format.
    """
    if spec is None or str(spec) == "":
        spec = DEFAULT_VERSION
    text = str(spec)
    if text in BUILTIN:
        return Questionnaire.from_dict(BUILTIN[text])
    if text.lower().endswith(".json") or Path(text).is_file():
        return Questionnaire.from_file(text)
    raise InputError(f"unknown questionnaire version '{text}' (known: {', '.join(sorted(BUILTIN))}, "
                     "or give a questionnaire JSON file)")
