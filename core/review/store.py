"""SQLite storage of a review study (standard library ``sqlite3`` only).

Two databases, kept in two places on purpose (threat model in :mod:`core.review.study`):

``STUDY/answers.sqlite`` (reviewer-facing)
    study id, questionnaire, cases (id, site, patient file), opaque plan files
    (random token -> ``plans/<token>.npz``), each reviewer's presentation
    (case, handle "A"/"B" -> token, case order) and the answers. Nothing in it says
    which token belongs to which arm until :func:`core.review.study.unblind` copies the
    key in.
``key.sqlite`` (coordinator, outside the study folder)
    study id, seed, arm names, token -> arm and source path.

Durability: WAL journal, ``synchronous=FULL``, one ``BEGIN IMMEDIATE`` transaction per
answer, so a reviewer's click is on disk when :meth:`Store.write` returns and a
killed process loses at most the click in flight. ``busy_timeout`` lets concurrent
reviewers queue; a lock held longer, or a damaged file, becomes an
:class:`~core.errors.InputError` naming the file, and nothing already saved is touched.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from core.errors import InputError

STORE_FORMAT = 1
DEFAULT_BUSY_TIMEOUT_MS = 5000

ANSWERS_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cases (
    case_id TEXT PRIMARY KEY, site TEXT NOT NULL DEFAULT '', patient_file TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS plans (
    token TEXT PRIMARY KEY, case_id TEXT NOT NULL REFERENCES cases(case_id), file TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS reviewers (name TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS presentations (
    reviewer TEXT NOT NULL REFERENCES reviewers(name), case_id TEXT NOT NULL REFERENCES cases(case_id),
    position INTEGER NOT NULL, handle TEXT NOT NULL CHECK (handle IN ('A', 'B')),
    token TEXT NOT NULL REFERENCES plans(token), PRIMARY KEY (reviewer, case_id, handle));
CREATE TABLE IF NOT EXISTS answers (
    reviewer TEXT NOT NULL, case_id TEXT NOT NULL, question_id TEXT NOT NULL, value TEXT NOT NULL,
    answered_utc TEXT NOT NULL, PRIMARY KEY (reviewer, case_id, question_id));
CREATE TABLE IF NOT EXISTS answer_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT, reviewer TEXT NOT NULL, case_id TEXT NOT NULL,
    question_id TEXT NOT NULL, value TEXT NOT NULL, answered_utc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS unblinded (token TEXT PRIMARY KEY, arm TEXT NOT NULL);
"""

KEY_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sources (
    token TEXT PRIMARY KEY, case_id TEXT NOT NULL, arm TEXT NOT NULL, source TEXT NOT NULL);
"""


def _is_lock(exc: sqlite3.Error) -> bool:
    msg = str(exc).lower()
    return "locked" in msg or "busy" in msg


def translate(exc: sqlite3.Error, path: Path, doing: str) -> InputError:
    """A planner-readable :class:`InputError` for an sqlite3 failure on ``path``."""
    if _is_lock(exc):
        return InputError(f"the study file is locked by another reviewer's session while {doing}; "
                          "nothing was lost, try again in a moment", path)
    if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.IntegrityError):
        return InputError(f"the study file is damaged or is not an OpenATP study ({exc}) while {doing}; "
                          "restore it from a copy (answers already saved are in the file and its -wal "
                          "companion; keep both)", path)
    return InputError(f"study database error while {doing}: {exc}", path)


class Store:
    """One SQLite database of a study.

    Parameters
    ----------
    path : Path
        The database file.
    create : bool
        Create the file and its tables (refuses an existing file).
    schema : str
        ``ANSWERS_SCHEMA`` or ``KEY_SCHEMA``.
    kind : str
        ``"answers"`` or ``"key"``; checked against the file's ``meta.kind``.
    busy_timeout_ms : int
        How long a write waits for another reviewer's transaction.
    readonly : bool
        Open read-only (``mode=ro``); writes then fail.
    """

    def __init__(self, path: str | Path, create: bool = False, schema: str = ANSWERS_SCHEMA,
                 kind: str = "answers", busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
                 readonly: bool = False):
        self.path = Path(path)
        self.kind = kind
        if create and self.path.exists():
            raise InputError("a study file already exists here; choose another place", self.path)
        if not create and not self.path.is_file():
            raise InputError(f"no {kind} file here", self.path)
        try:
            if readonly:
                uri = f"{self.path.resolve().as_uri()}?mode=ro"
                self.conn = sqlite3.connect(uri, uri=True, isolation_level=None,
                                            timeout=busy_timeout_ms / 1000.0, check_same_thread=False)
            else:
                self.conn = sqlite3.connect(str(self.path), isolation_level=None,
                                            timeout=busy_timeout_ms / 1000.0, check_same_thread=False)
            self.conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            if not readonly:
                mode = self.conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise InputError(f"cannot switch the study file to WAL journaling (got {mode}); "
                                     "is it on a network drive that lacks shared memory?", self.path)
            self.conn.execute("PRAGMA synchronous = FULL")
            self.conn.execute("PRAGMA foreign_keys = ON")
            if create:
                with self.transaction("creating the study"):
                    for stmt in schema.strip().split(";"):
                        if stmt.strip():
                            self.conn.execute(stmt)
                    self.conn.execute("INSERT INTO meta VALUES ('kind', ?)", (kind,))
                    self.conn.execute("INSERT INTO meta VALUES ('store_format', ?)", (str(STORE_FORMAT),))
            else:
                ok = self.conn.execute("PRAGMA quick_check").fetchone()[0]
                if ok != "ok":
                    raise InputError(f"the study file fails its integrity check ({ok}); restore it from a copy",
                                     self.path)
                got = self.get_meta("kind")
                if got != kind:
                    raise InputError(f"this is not a review {kind} file (it says {got!r})", self.path)
                fmt = self.get_meta("store_format")
                if fmt != str(STORE_FORMAT):
                    raise InputError(f"study file format {fmt} is not supported (this OpenATP reads "
                                     f"{STORE_FORMAT})", self.path)
        except sqlite3.Error as exc:
            with contextlib.suppress(Exception):
                self.conn.close()
            raise translate(exc, self.path, "opening it") from None

    # -- transactions -----------------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self, doing: str = "saving"):
        """``BEGIN IMMEDIATE`` ... ``COMMIT``; rollback on error; sqlite errors -> InputError."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise translate(exc, self.path, doing) from None
        try:
            yield self.conn
            self.conn.execute("COMMIT")
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise translate(exc, self.path, doing) from None
            raise

    def query(self, sql: str, params=(), doing: str = "reading") -> list:
        try:
            return self.conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise translate(exc, self.path, doing) from None

    def get_meta(self, key: str) -> str | None:
        try:
            row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error as exc:
            raise translate(exc, self.path, "reading the study header") from None
        return None if row is None else row[0]

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
