"""The one worker pattern: progress, result, typed failure and cancel, off the GUI thread."""

import threading
import time

import pytest

import widgets  # noqa: F401  (PySide6 reference-count work-around before any Qt use)
from app.workers import TaskRunner
from core.errors import InputError
from core.progress import check_cancel, report


def _count(n, progress=None, cancel=None):
    for i in range(n):
        check_cancel(cancel, result=i)
        report(progress, i + 1, n, f"step {i + 1}")
        time.sleep(0.002)
    return {"n": n, "thread": threading.get_ident()}


def test_progress_and_result_on_worker_thread(qtbot):
    runner = TaskRunner()
    seen = []
    task = runner.run("count", _count, 20)
    task.progress.connect(lambda f, m, eta: seen.append((f, m, eta)))
    with qtbot.waitSignal(task.succeeded, timeout=5000) as sig:
        pass
    assert sig.args[0]["n"] == 20
    assert sig.args[0]["thread"] != threading.get_ident()  # computed off the GUI thread
    qtbot.waitUntil(lambda: not runner.busy, timeout=5000)
    assert seen and seen[-1][0] == pytest.approx(1.0)
    assert [f for f, _, _ in seen] == sorted(f for f, _, _ in seen)
    assert any(eta is not None for _, _, eta in seen[:-1])


def test_typed_failure_reaches_gui_thread(qtbot):
    def bad(progress=None, cancel=None):
        raise InputError("the CT series has a gap between slices 12 and 14", "/data/pt1")

    runner = TaskRunner()
    task = runner.run("bad", bad)
    with qtbot.waitSignal(task.failed, timeout=5000) as sig:
        pass
    assert isinstance(sig.args[0], InputError)
    assert "gap between slices" in str(sig.args[0])
    qtbot.waitUntil(lambda: not runner.busy, timeout=5000)


def test_cancel_keeps_last_result(qtbot):
    gate = threading.Event()

    def slow(progress=None, cancel=None):
        gate.set()
        for i in range(10_000):
            check_cancel(cancel, result=i)
            time.sleep(0.001)
        return "finished"

    runner = TaskRunner()
    states = []
    runner.busyChanged.connect(states.append)
    task = runner.run("slow", slow)
    assert gate.wait(5)
    with qtbot.waitSignal(task.cancelled, timeout=5000) as sig:
        runner.cancel_all()
    assert sig.args[0].result is not None and sig.args[0].result < 10_000
    qtbot.waitUntil(lambda: not runner.busy, timeout=5000)
    assert states == [True, False]
    assert task.outcome == "cancelled"


def test_progress_flood_is_throttled(qtbot):
    """A core loop reporting 20 000 times must not flood the GUI event queue."""
    def chatty(progress=None, cancel=None):
        for i in range(20_000):
            report(progress, i + 1, 20_000, "looping")
        return "ok"

    runner = TaskRunner()
    seen = []
    task = runner.run("chatty", chatty)
    task.progress.connect(lambda f, m, eta: seen.append(f))
    with qtbot.waitSignal(task.succeeded, timeout=10000):
        pass
    qtbot.waitUntil(lambda: not runner.busy, timeout=5000)
    assert 1 <= len(seen) < 2000
    assert seen[-1] == pytest.approx(1.0)  # the final report always arrives


def test_shutdown_from_the_gui_thread_stops_a_running_task(qtbot):
    # shutdown() blocks the GUI thread (window close), so the task's own quit(), which goes
    # through the GUI thread's event loop, never arrives: the worker must end its thread.
    runner = TaskRunner()
    task = runner.run("count", _count, 100000)
    qtbot.waitUntil(lambda: task.running, timeout=5000)
    t0 = time.monotonic()
    runner.shutdown(ms=3000)
    assert time.monotonic() - t0 < 2.5
    assert task.thread.isFinished()
    # the queued cancel/done signals still reach the runner afterwards
    qtbot.waitUntil(lambda: not runner.busy, timeout=5000)
    assert task.outcome == "cancelled"
