"""Progress mapping of nested stages, cancellation, stderr bar."""

import io

import pytest

from core.errors import Cancelled
from core.progress import CancelToken, Progress, StderrBar, check_cancel, report


def test_stage_maps_onto_parent_slice():
    events = []
    root = Progress(events.append)
    child = root.stage(0.5, 1.0, "optimize")
    grandchild = child.stage(0.0, 0.5)
    grandchild.update(1, 2, "half", loss=0.25)
    ev = events[-1]
    assert ev.fraction == pytest.approx(0.5 + 0.5 * 0.5 * 0.5)
    assert ev.message == "optimize: half"
    assert ev.metrics == {"loss": 0.25}
    child.update(3, 2)                 # clipped to 1
    assert events[-1].fraction == pytest.approx(1.0)
    report(None, 1, 2)                 # accepts None
    Progress(None).update(1, 2)        # discards


def test_eta():
    events = []
    Progress(events.append).update(1, 4)
    ev = events[-1]
    ev.elapsed_s = 10.0
    assert ev.eta_s == pytest.approx(30.0)


def test_cancel_token():
    tok = CancelToken()
    check_cancel(None)
    tok.check()
    tok.cancel()
    assert tok.cancelled
    with pytest.raises(Cancelled) as exc:
        check_cancel(tok, result="last good")
    assert exc.value.result == "last good"


def test_stderr_bar_silent_without_terminal():
    buf = io.StringIO()
    bar = StderrBar(stream=buf)
    Progress(bar).update(1, 2, "x")
    bar.close()
    assert buf.getvalue() == ""
