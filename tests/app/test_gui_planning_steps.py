"""Planning step by step through the window: build goals -> optimize cold -> edit a goal ->
re-optimize warm -> cancel -> revert, each step on a worker, the session checked after each.

The patient is the small synthetic head-and-neck phantom of the pipeline tests (14 x 36 x 36
voxels of 4 mm, PTV70 and a spinal cord), written as an OpenKBP-like case and loaded through
the loader, so the whole flow takes seconds on one thread.
"""

import time

import pytest
from PySide6.QtCore import Qt

import widgets  # noqa: F401  (PySide6 reference-count work-around before any Qt use)
from core.goals.goal import GoalKind
from widgets.goal_table import COL_VALUE


def _run(qtbot, ws, task, timeout=120000):
    """Wait for a step's worker to succeed, then for the DVH update it starts."""
    assert task is not None
    with qtbot.waitSignal(task.succeeded, timeout=timeout,
                          raising=True, check_params_cb=None):
        pass
    qtbot.waitUntil(lambda: not ws.runner.busy, timeout=timeout)
    assert ws.errors == [], ws.errors


def _row_of(table, structure, kind):
    return next(i for i, g in enumerate(table.goals()) if g.structure == structure and g.kind is kind)


def test_step_by_step_planning_with_warm_reoptimization_cancel_and_revert(qtbot, loaded):
    ws = loaded
    session, table, actions = ws.session, ws.window.goal_table, ws.actions
    assert table.model.structure_names == list(session.patient.structures)
    assert actions["plan.build_goals"].isEnabled()
    assert not actions["plan.optimize"].isEnabled() and not actions["plan.reoptimize"].isEnabled()

    # -- build goals: template + prediction ----------------------------------------------------
    _run(qtbot, ws, ws.planning.build_goals())
    assert session.site == "hn"  # guessed from PTV70 / SpinalCord
    assert session.predicted is not None and "predicted" in session.plans  # the hn model ships
    goals = session.goals
    assert {g.structure for g in goals} >= {"PTV70", "SpinalCord"}
    assert table.goals() == sorted(goals, key=lambda g: g.priority)
    assert "Ring_PTV70_5_15mm" in session.patient.structures  # the template's helper ring
    assert any(table.model.predicted(r) is not None for r in range(len(goals)))
    assert table.model.changed_rows() == []  # nothing optimized yet
    assert actions["plan.optimize"].isEnabled() and not actions["plan.reoptimize"].isEnabled()

    # -- optimize cold ----------------------------------------------------------------------------
    t0 = time.perf_counter()
    _run(qtbot, ws, ws.planning.optimize())
    cold_s = time.perf_counter() - t0
    assert len(session.history) == 1
    v1 = session.history[0]
    r1 = session.plans[v1.key].info["result"]
    assert not v1.warm and not r1.metrics["dose_matrix_reused"] and r1.metrics["timings_s"]["dose_matrix"] > 0
    assert session.active_plan == v1.key and session.dij is r1.dij and session.optimization is r1.optimization
    assert list(v1.goals) == goals
    # the table shows the plan's values; the plan is in the chooser and on the DVH
    assert all(table.model.achieved(r) is not None for r in range(len(goals)))
    assert [table.model.met(r) for r in range(len(goals))] == \
        [g["met"] for g in sorted(r1.metrics["goals"], key=lambda g: g["priority"])]
    box = ws.window.plan_box
    assert box.itemData(box.currentIndex()) == v1.key
    assert v1.name in ws.window.dvh_panel.plot.plans
    assert actions["plan.reoptimize"].isEnabled() and actions["plan.revert"].isEnabled()

    # -- edit a goal in the table: the cord's P2 near-max 5 Gy lower ------------------------------
    row = next(i for i, g in enumerate(table.goals()) if g.structure == "SpinalCord" and g.priority > 1)
    old = table.goals()[row]
    with qtbot.waitSignal(table.goals_changed, timeout=1000):
        assert table.model.setData(table.model.index(row, COL_VALUE), old.dose_gy - 5.0)
    edited = table.goals()[row]
    assert edited.dose_gy == pytest.approx(old.dose_gy - 5.0)
    assert edited in session.goals and old not in session.goals
    assert table.model.changed_rows() == [row]
    assert table.model.met(row) is not None  # same metric: the achieved value still applies

    # -- re-optimize warm through the action --------------------------------------------------------
    t0 = time.perf_counter()
    actions["plan.reoptimize"].trigger()
    assert ws.runner.busy
    task = next(t for t in ws.runner.tasks if t.name.startswith("Re-optimizing"))
    _run(qtbot, ws, task)
    warm_s = time.perf_counter() - t0
    assert len(session.history) == 2
    v2 = session.history[1]
    r2 = session.plans[v2.key].info["result"]
    assert v2.warm and r2.metrics["warm_start"] and r2.metrics["dose_matrix_reused"]
    assert r2.dij is r1.dij  # the matrix was reused, not recomputed
    assert edited in v2.goals and old in v1.goals  # each version keeps its own goals
    assert session.active_plan == v2.key and table.model.changed_rows() == []
    achieved_cord = table.model.achieved(row)
    assert achieved_cord == pytest.approx(v2.achieved[("SpinalCord", edited.metric)])
    print(f"\nstep timings on the small phantom: cold {cold_s:.2f} s (optimize "
          f"{r1.metrics['timings_s']['optimize']:.2f} s), warm {warm_s:.2f} s (optimize "
          f"{r2.metrics['timings_s']['optimize']:.2f} s)")

    # -- cancel a run: the session stays as it was, plus the best fluence so far -------------------
    ptv_row = _row_of(table, "PTV70", GoalKind.MIN_DOSE_AT_VOLUME)
    table.model.setData(table.model.index(ptv_row, COL_VALUE), 71.0)
    goals_before = list(session.goals)
    task = ws.planning.reoptimize()
    # cancel from inside the worker at the optimizer's first report: deterministic, however
    # fast this machine optimizes (a click would race a sub-second optimization)
    task.worker.progress.connect(lambda f, msg, eta: task.cancel() if msg.startswith("optimize") else None,
                                 Qt.ConnectionType.DirectConnection)
    with qtbot.waitSignal(task.cancelled, timeout=60000):
        pass
    qtbot.waitUntil(lambda: not ws.runner.busy, timeout=60000)
    assert ws.errors == []
    assert session.state.startswith("optimization cancelled"), session.state
    assert session.goals == goals_before and session.dij is r1.dij
    assert [v.key for v in session.history[:2]] == [v1.key, v2.key]
    if len(session.history) == 3:  # the optimizer had a fluence: kept as a cancelled version
        assert session.history[2].cancelled and session.active_plan == session.history[2].key
    assert table.model.changed_rows() == [ptv_row]  # not applied: still marked

    # -- revert to the first plan: its goals come back, the next warm start is its fluence --------
    session.set_active_plan(v1.key)
    assert actions["plan.revert"].isEnabled()
    actions["plan.revert"].trigger()
    assert session.goals == list(v1.goals) and table.goals() == sorted(v1.goals, key=lambda g: g.priority)
    assert session.optimization is v1.optimization and table.model.changed_rows() == []
    assert "reverted" in session.state


def test_institution_template_saved_from_the_session_loads_back(qtbot, loaded, tmp_path):
    from core.goals.templates import available_templates, goals_for_patient, user_protocol_dir

    ws = loaded
    _run(qtbot, ws, ws.planning.load_template("hn"))
    session, table = ws.session, ws.window.goal_table
    assert session.site == "hn" and session.predicted is None
    row = next(i for i, g in enumerate(table.goals()) if g.structure == "SpinalCord" and g.priority == 1)
    table.model.setData(table.model.index(row, COL_VALUE), 40.0)
    path = ws.planning.save_template("hn_inst", "Head and neck, our clinic")
    assert path.parent == user_protocol_dir() and str(path).startswith(str(tmp_path))
    assert "hn_inst" in available_templates()
    again, _ = goals_for_patient(session.patient, "hn_inst")
    assert sorted(g.label for g in again) == sorted(g.label for g in session.goals)
    from core.errors import InputError

    with pytest.raises(InputError, match="already exists"):
        ws.planning.save_template("hn_inst", "again")
    # the goal table's template menu offers it
    table._fill_template_menu()
    assert "hn_inst" in [a.data() for a in table.template_menu.actions()]


def test_optimize_without_goals_is_a_message_not_a_crash(qtbot, loaded):
    ws = loaded
    assert ws.planning.optimize() is None
    assert ws.errors and "no goals" in str(ws.errors[-1])
    assert ws.session.history == [] and not ws.runner.busy


def test_demo_patient_predict_goals_optimize_through_the_workers(qtbot, workstation, demo_case):
    """The real demo case (OpenKBP pt_201, 128^3) through Predict -> Build goals -> Optimize.

    A coarse dose grid (9 mm) and 10 mm beamlets keep the optimization to seconds on one
    thread; what is checked is the flow on real data: the model's prediction reaches the goal
    table, the goals are personalised from it, and the optimized plan's achieved values and
    verdicts come back to the session.
    """
    from core.pipeline import PlanOptions

    ws = workstation
    ws.patients.load(str(demo_case))
    qtbot.waitUntil(lambda: ws.session.has_patient and not ws.runner.busy, timeout=30000)
    _run(qtbot, ws, ws.planning.predict(), timeout=60000)
    assert ws.session.predicted is not None
    _run(qtbot, ws, ws.planning.build_goals(), timeout=60000)
    goals = ws.session.goals
    assert any(g.priority == 1 and g.structure == "PTV70" for g in goals)
    assert any("from dose" in (g.note or "") for g in goals)   # personalised by the prediction
    ws.planning.plan_options = PlanOptions(device="cpu", dose_grid_mm=9.0, beamlet_mm=10.0)
    _run(qtbot, ws, ws.planning.optimize(), timeout=300000)
    assert ws.session.optimization is not None and ws.session.dij is not None
    assert len(ws.session.plans) >= 2                            # reference + the new plan
    table = ws.window.goal_table
    n = len(table.goals())
    assert all(table.model.achieved(r) is not None for r in range(n))   # every goal got its value
    assert all(table.model.predicted(r) is not None for r in range(n) if table.goals()[r].structure in
               ws.session.patient.structures and not table.goals()[r].structure.startswith("Ring"))


def test_plan_time_limit_is_a_setting_the_optimize_steps_and_the_automated_plan_use(workstation, monkeypatch):
    from core.pipeline import DEFAULT_TIME_BUDGET_S
    from app.controllers import planning

    ws = workstation
    p = ws.planning
    assert "plan.time_limit" in ws.actions and ws.actions["plan.time_limit"].isEnabled()
    assert p.time_limit_s == DEFAULT_TIME_BUDGET_S == p.effective_options().time_budget_s  # the CLI's default
    p.set_time_limit(30)
    assert p.time_limit_s == 30.0 and p.effective_options().time_budget_s == 30.0
    assert float(ws.settings.value(planning.TIME_LIMIT_KEY)) == 30.0  # kept for the next session
    p.set_time_limit(0)
    assert p.time_limit_s is None and p.effective_options().time_budget_s is None  # 0: no limit
    # the automated plan hands the limit to the pipeline
    seen = {}

    def fake_plan_patient(patient, site, options=None, progress=None, cancel=None):
        seen["budget"] = options.time_budget_s
        raise RuntimeError("stop here")

    monkeypatch.setattr("core.pipeline.plan_patient", fake_plan_patient)
    monkeypatch.setattr("core.pipeline.guess_site", lambda patient: "hn")
    p.set_time_limit(45)
    with pytest.raises(RuntimeError):
        planning.plan_task(object(), None, p.time_limit_s)
    assert seen["budget"] == 45.0
