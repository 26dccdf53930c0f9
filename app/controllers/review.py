"""Blinded review in the GUI: one reviewer working through a study in a review window.

:class:`ReviewSession` drives one :class:`app.review_window.ReviewWindow`: it opens the
study (:class:`core.review.study.ReviewStudy`), resumes at the reviewer's first open
case, loads each case on a worker (:func:`core.review.case_data.load_review_case`) and
prefetches the next one, and saves every answer through the core store the moment it
is given (one SQLite transaction per click). :class:`ReviewController` is the
workstation's ``review.*`` handler (File > Open review study…).

The session hands the panel only :class:`~core.review.case_data.ReviewCaseData` and the
questionnaire; it never reads the key and shows no path.
"""

from __future__ import annotations

import dataclasses
import time
from PySide6.QtCore import QObject, Signal

from core.errors import OpenATPError

#: How long a save waits for another reviewer's save before it reports the lock: long
#: enough for any normal transaction, short enough not to freeze the screen.
GUI_BUSY_TIMEOUT_MS = 2000


def load_case_task(study_dir: str, case, n_cases: int, progress=None, cancel=None):
    """Worker body: one case's display data (runs off the GUI thread)."""
    from core.review.case_data import load_review_case

    return load_review_case(study_dir, case, n_cases, progress=progress, cancel=cancel)


class ReviewSession(QObject):
    """One reviewer, one study, one review window.

    Parameters
    ----------
    study_dir : path
    reviewer : str
    window : app.review_window.ReviewWindow
    runner : app.workers.TaskRunner
    show_error : callable(exception, title)
        Where errors go (a dialog, or a list in tests and screenshots).

    Signals
    -------
    caseShown(int)
        A case is on screen (0-based position in the reviewer's order).
    finishedAll()
        Every case is answered (the "thank you" page is shown).

    Raises
    ------
    InputError
        No study there, a damaged or locked study file, or an unknown reviewer.
    """

    caseShown = Signal(int)
    finishedAll = Signal()

    PREFETCH = 1  # cases loaded ahead: loading takes well under the time a reviewer spends on one

    def __init__(self, study_dir, reviewer: str, window, runner, show_error, parent=None):
        super().__init__(parent)
        from core.review.study import ReviewStudy

        self.study = ReviewStudy(study_dir, busy_timeout_ms=GUI_BUSY_TIMEOUT_MS)
        try:
            self.reviewer = reviewer
            self.cases = self.study.cases_for(reviewer)  # raises for an unknown reviewer
            if self.study.is_unblinded:
                from core.errors import InputError

                raise InputError("this study has been unblinded: answers are closed", self.study.dir)
        except BaseException:
            self.study.close()
            raise
        self.window = window
        self.panel = window.panel
        self.runner = runner
        self.show_error = show_error
        self.position: int | None = None  # None: the "all answered" page
        self.wanted: int | None = None
        self._cache: dict = {}
        self._loading: dict = {}
        self._t_request = None
        self.switch_times_s: list = []  # request -> case on screen, per case switch
        self.panel.set_questionnaire(self.study.questionnaire)
        self.panel.answerChosen.connect(self.save_answer)
        self.panel.commentChanged.connect(self.save_answer)
        self.panel.nextRequested.connect(self.next_case)
        self.panel.previousRequested.connect(self.previous_case)
        window.closing.connect(self.close)
        window.set_reviewer(reviewer)

    # -- navigation --------------------------------------------------------------------
    @property
    def n_cases(self) -> int:
        return len(self.cases)

    def resume(self) -> None:
        """Go to the first case this reviewer has not finished (the thank-you page if none)."""
        nxt = self.study.next_case(self.reviewer)
        if nxt is None:
            self._show_finished()
        else:
            self.go_to(nxt.position)

    def go_to(self, position: int) -> None:
        """Show the case at ``position`` (from the prefetch cache, else load it on a worker)."""
        if not 0 <= position < self.n_cases:
            return
        self._t_request = time.perf_counter()
        self.wanted = position
        if position in self._cache:
            self._show(position)
        else:
            self.panel.set_loading(f"loading case {position + 1} of {self.n_cases}…")
            self._load(position)

    def next_case(self) -> None:
        """Enter / N: on to the next case once every statement of this one is answered."""
        if self.position is None:
            return
        self._flush_comment()
        if not self._complete(self.position):
            self.panel.show_message("Answer every statement of this case first (keys 1, 2, 3).")
            return
        if self.position + 1 < self.n_cases:
            self.go_to(self.position + 1)
            return
        nxt = self.study.next_case(self.reviewer)  # skipped cases earlier in the order
        if nxt is None:
            self._show_finished()
        else:
            self.go_to(nxt.position)

    def previous_case(self) -> None:
        """P: back one case (from the thank-you page: the last case)."""
        if self.position is None:
            if self.n_cases:
                self.go_to(self.n_cases - 1)
            return
        self._flush_comment()
        if self.position > 0:
            self.go_to(self.position - 1)

    # -- answers -----------------------------------------------------------------------
    def save_answer(self, question_id: str, value) -> None:
        """Save one answer now (its own transaction); the panel then shows what is stored."""
        if self.position is None or self.study is None:
            return
        cid = self.cases[self.position].case_id
        comment_id = getattr(self.panel.comment_question, "id", None)
        if question_id == comment_id and str(value or "") == str(self.cases[self.position].answers.get(
                question_id, "") or ""):
            return  # an unchanged comment: nothing to write
        try:
            self.study.save_answer(self.reviewer, cid, question_id, value)
        except OpenATPError as exc:
            self.show_error(exc, "The answer was not saved")
        try:
            stored = self.study.answers_for(self.reviewer, cid)
        except OpenATPError as exc:
            self.show_error(exc, "Could not read the study")
            return
        self.cases[self.position] = dataclasses.replace(self.cases[self.position], answers=stored)
        if question_id != comment_id:
            self.panel.set_answers(stored)  # a failed save shows the stored answer again
        self._update_progress()

    def _flush_comment(self) -> None:
        q = self.panel.comment_question
        if q is not None and self.position is not None and self.panel.case_id is not None:
            self.save_answer(q.id, self.panel.comment_text())

    def _complete(self, position: int) -> bool:
        answers = self.cases[position].answers
        return all(q in answers for q in self.study.questionnaire.required_ids)

    def n_complete(self) -> int:
        return sum(self._complete(i) for i in range(self.n_cases))

    # -- loading -----------------------------------------------------------------------
    def _load(self, position: int) -> None:
        if position in self._loading or position in self._cache or not 0 <= position < self.n_cases:
            return
        case = self.cases[position]
        task = self.runner.run(f"Loading case {position + 1}", load_case_task, str(self.study.dir), case,
                               self.n_cases,
                               on_success=lambda data, p=position: self._on_loaded(p, data),
                               on_failure=lambda exc, p=position: self._on_load_failed(p, exc),
                               on_cancel=lambda _e, p=position: self._loading.pop(p, None))
        self._loading[position] = task

    def _on_loaded(self, position: int, data) -> None:
        self._loading.pop(position, None)
        if self.study is None:
            return  # closed meanwhile
        self._cache[position] = data
        if self.wanted == position and self.position != position:
            self._show(position)

    def _on_load_failed(self, position: int, exc) -> None:
        self._loading.pop(position, None)
        if self.wanted == position and self.study is not None:
            self.panel.show_message(f"case {position + 1} could not be loaded")
            self.show_error(exc, "Could not load the case")

    def _show(self, position: int) -> None:
        data = self._cache[position]
        self.panel.leave_comment()  # a comment still being typed is saved on its own case
        self._flush_comment()
        # answers may have changed since the case was loaded (prefetched, or revisited)
        data = dataclasses.replace(data, answers=dict(self.cases[position].answers))
        self.position = position
        self.panel.show_case(data)
        self._update_progress()
        self.window.set_case_title(position, self.n_cases)
        if self._t_request is not None:
            self.switch_times_s.append(time.perf_counter() - self._t_request)
            self._t_request = None
        # keep the current case and the next ones; drop the rest (each case is ~20 MB)
        keep = set(range(position, position + self.PREFETCH + 1)) | {position - 1}
        for p in [p for p in self._cache if p not in keep]:
            del self._cache[p]
        for p in range(position + 1, min(position + 1 + self.PREFETCH, self.n_cases)):
            self._load(p)
        self.caseShown.emit(position)

    def _show_finished(self) -> None:
        self.position = None
        self.wanted = None
        self.panel.show_finished(self.n_cases)
        self.window.set_case_title(None, self.n_cases)
        self.finishedAll.emit()

    def _update_progress(self) -> None:
        if self.position is None:
            return
        cv = self.cases[self.position]
        self.panel.set_progress(self.position, self.n_cases, self.n_complete(), cv.case_id, cv.site)

    # -- end ---------------------------------------------------------------------------
    def close(self) -> None:
        """Save a comment still being typed, stop loading, close the study file."""
        if self.study is None:
            return
        try:
            self._flush_comment()
        finally:
            # Not runner.shutdown(): it waits for each thread to end, and a task's thread
            # ends on a quit() queued to this (GUI) thread, which would not run while we
            # wait (or at all once the event loop has returned). A load is short; cancel
            # it, stop its thread's event loop directly (QThread.quit() is thread-safe)
            # and wait.
            for t in self.runner.tasks:
                t.cancel()
                if t.running:
                    t.thread.quit()
                    t.thread.wait(30000)
            self.study.close()
            self.study = None


def open_review(study_dir, reviewer: str, headless: bool = False, show_error=None):
    """A review window with its session and its own task runner, resumed and shown.

    Returns ``(window, session)``; errors opening the study raise :class:`InputError`.
    """
    from app.review_window import ReviewWindow
    from app.workers import TaskRunner

    window = ReviewWindow()
    runner = TaskRunner(window)
    errors = []

    def default_show_error(exc, title="OpenATP review"):
        errors.append(exc)
        if not headless:
            window.show_error(exc, title)

    try:
        session = ReviewSession(study_dir, reviewer, window, runner, show_error or default_show_error, parent=window)
    except BaseException:
        window.deleteLater()
        raise
    session.errors = errors
    window.session = session
    window.task_progress_from(runner)
    return window, session


class ReviewController(QObject):
    """Handlers ``review.*`` of the action table: File > Open review study…"""

    opened = Signal(object)

    def __init__(self, workstation):
        super().__init__(workstation)
        self.ws = workstation
        self.windows: list = []

    def open_dialog(self) -> None:
        from PySide6.QtWidgets import QFileDialog, QInputDialog

        folder = QFileDialog.getExistingDirectory(self.ws.window, "Open review study (the study folder)")
        if not folder:
            return
        try:
            from core.review.study import ReviewStudy

            with ReviewStudy(folder, readonly=True) as st:
                reviewers = st.reviewers()
        except OpenATPError as exc:
            self.ws.show_error(exc, "Could not open the review study")
            return
        name, ok = QInputDialog.getItem(self.ws.window, "Reviewer", "Your name in this study:", reviewers, 0, False)
        if ok and name:
            self.open(folder, name)

    def open(self, study_dir, reviewer: str):
        """Open a review window for ``reviewer`` (resumes where they stopped); returns it or None."""
        try:
            window, session = open_review(study_dir, reviewer, headless=self.ws.headless,
                                          show_error=self.ws.show_error)
        except OpenATPError as exc:
            self.ws.show_error(exc, "Could not open the review study")
            return None
        self.windows.append(window)
        window.closing.connect(lambda w=window: self.windows.remove(w) if w in self.windows else None)
        window.resize(1600, 1000)
        window.show()
        session.resume()
        self.opened.emit(window)
        return window
