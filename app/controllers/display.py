"""Keeps what the window shows in step with the session.

Session changes -> viewer model (CT, structures, active dose), structure list, 3D scene,
status bar; DVHs and endpoints are computed by the core on a worker and handed to the DVH
panel. Display-only handlers of the action table (``display.*``) live here too.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QObject, QTimer

from widgets.dvh_panel import DvhCurve, GoalMarker
from widgets.viewer_model import StructureLayer

#: V-values of the endpoint table, Gy (plus V95 % of the prescription for targets).
V_LEVELS_GY = (30.0, 50.0)
ENDPOINT_COLUMNS = ["Structure", "Plan", "cc", "D95", "D2", "Mean", "Max", "V95%Rx (%)"] + \
    [f"V{v:g}Gy (%)" for v in V_LEVELS_GY]


def dvh_task(patient, plans, reference_gy: float, progress=None, cancel=None):
    """Worker body: cumulative DVHs and endpoints of every structure for every plan.

    Parameters
    ----------
    patient : core.patient.Patient
    plans : list of (key, label, dose_gy ndarray)
    reference_gy : float
        Prescription used for V95%Rx of targets without their own prescription.

    Returns
    -------
    dict with ``curves`` (list of dicts: structure, plan, color, dose_gy, volume_pct) and
    ``rows`` (endpoint table rows, :data:`ENDPOINT_COLUMNS`).
    """
    from core.evaluation.dvh import cumulative_dvh, dvh_endpoints, structure_doses, volume_at_dose_pct
    from core.patient import StructureRole
    from core.progress import check_cancel, report

    structures = [s for s in patient.structures.values() if not s.is_empty]
    total = max(len(plans) * len(structures), 1)
    curves, rows = [], []
    n = 0
    for key, label, dose_gy in plans:
        for s in structures:
            check_cancel(cancel)
            bins, _vcc, vpct = cumulative_dvh(dose_gy, s.mask, patient.grid)
            curves.append({"structure": s.name, "plan": label, "color": tuple(s.color),
                           "dose_gy": bins, "volume_pct": vpct})
            ep = dvh_endpoints(dose_gy, s.mask, patient.grid, name=s.name)
            vals = structure_doses(dose_gy, s.mask)
            rx = patient.prescription_for(s.name)
            rx_gy = rx.dose_gy if rx is not None else reference_gy
            v95 = (volume_at_dose_pct(vals, 0.95 * rx_gy) if (s.role is StructureRole.TARGET and rx_gy > 0)
                   else float("nan"))
            rows.append([s.name, label, ep["volume_cc"], ep["D95"], ep["D2"], ep["mean"], ep["max"], float(v95)]
                        + [float(volume_at_dose_pct(vals, v)) for v in V_LEVELS_GY])
            n += 1
            report(progress, n, total, f"DVH {s.name}")
    return {"curves": curves, "rows": rows}


def goal_markers(goals, patient, dose_gy) -> list:
    """DVH markers of dose-volume goals, coloured by whether ``dose_gy`` meets them."""
    from core.goals.evaluate import evaluate_goals
    from core.goals.goal import GoalKind

    masks = {name: s.mask for name, s in patient.structures.items()}
    usable = [g for g in goals if g.structure in masks]
    results = evaluate_goals(usable, dose_gy, masks, patient.grid.voxel_volume_cc) if dose_gy is not None else \
        [None] * len(usable)
    out = []
    for g, res in zip(usable, results):
        if g.kind not in (GoalKind.MIN_DOSE_AT_VOLUME, GoalKind.MAX_DOSE_AT_VOLUME, GoalKind.MAX_VOLUME_AT_DOSE):
            continue  # mean-dose goals have no point on a DVH
        vol_pct = g.volume_pct
        if vol_pct is None and g.volume_cc is not None:
            total_cc = patient.structures[g.structure].volume_cc(patient.grid)
            vol_pct = 100.0 * g.volume_cc / total_cc if total_cc > 0 else None
        if vol_pct is None or g.dose_gy is None:
            continue
        kind = "min" if g.kind is GoalKind.MIN_DOSE_AT_VOLUME else "max"
        out.append(GoalMarker(g.structure, float(g.dose_gy), float(vol_pct), kind, None if res is None else res.met))
    return out


class DisplayController(QObject):
    """Handlers ``display.*`` and the session -> widgets wiring."""

    def __init__(self, workstation):
        super().__init__(workstation)
        self.ws = workstation
        self.model = workstation.viewer_model
        self.goals: list = []
        self._dvh_task = None
        workstation.session.changed.connect(self._on_session_changed)
        self.model.structuresChanged.connect(self._sync_dvh_visibility)
        workstation.window.planChosen.connect(workstation.session.set_active_plan)
        workstation.window.structure_list.structureActivated.connect(self.centre_on_structure)
        self.model.structuresChanged.connect(self._update_volume_scene)  # 3D follows the visibility list
        # Structure edits come in bursts (a brush stroke, a set of helper rings): one DVH
        # recomputation after the burst, not one per edit.
        self._dvh_timer = QTimer(self)
        self._dvh_timer.setSingleShot(True)
        self._dvh_timer.setInterval(self.STRUCTURE_DVH_DELAY_MS)
        self._dvh_timer.timeout.connect(self._start_dvh_if_patient)
        workstation.window.closing.connect(self._dvh_timer.stop)  # no task after the runner shut down

    STRUCTURE_DVH_DELAY_MS = 600

    # -- session -> widgets ------------------------------------------------------------------
    def _on_session_changed(self, what: list) -> None:
        session, win = self.ws.session, self.ws.window
        if "patient" in what and session.patient is not None:
            self._show_patient(session.patient)
        if ("plans" in what or "active_plan" in what or "patient" in what) and session.patient is not None:
            self._show_active_dose()
        if "plans" in what or "patient" in what or "active_plan" in what:
            win.set_plans([(k, p.label) for k, p in session.plans.items()], session.active_plan)
        if "plans" in what or "patient" in what:
            self._start_dvh()
        if "structures" in what and "patient" not in what and session.patient is not None:
            self._sync_structures(session.patient)
            self._dvh_timer.start()
        if "state" in what or "active_plan" in what:
            active = session.active()
            win.set_status(plan=f"{session.state}" + (f"  ·  shown: {active.label}" if active else ""))

    def _show_patient(self, patient) -> None:
        ct = patient.ct.hu if patient.ct is not None else None
        self.model.set_volume(ct, patient.grid)
        layers = [StructureLayer(s.name, s.mask, tuple(s.color), s.role.value != "EXTERNAL", s.role.value)
                  for s in patient.structures.values() if not s.is_empty]
        self.model.set_structures(layers)
        try:
            body = patient.external_mask()
        except Exception:  # noqa: BLE001 - no body outline: fit the whole grid instead
            body = None
        self.model.set_focus_mask(body)
        self.ws.window.structure_list.set_volumes({s.name: s.volume_cc(patient.grid)
                                                   for s in patient.structures.values()})
        g = patient.grid
        self.ws.window.set_status(patient=f"{patient.patient_id}  ·  {g.shape[0]}×{g.shape[1]}×{g.shape[2]}  "
                                          f"{'/'.join(f'{s:.2g}' for s in g.spacing_mm)} mm")
        self.ws.window.setWindowTitle(f"OpenATP — {patient.patient_id}")

    def _sync_structures(self, patient) -> None:
        """Show structures the patient gained (helper rings, drawn patches) and drop the
        layers of those it lost; layers already shown keep their visibility. A layer that is
        being drawn and is still empty is not in the patient yet and stays."""
        layers = dict(self.model.structures)
        changed = False
        for s in patient.structures.values():
            if not s.is_empty and s.name not in layers:
                layers[s.name] = StructureLayer(s.name, s.mask, tuple(s.color), True, s.role.value)
                changed = True
        for name, layer in list(layers.items()):
            if name not in patient.structures and layer.mask.any():
                del layers[name]
                changed = True
        if changed:
            self.model.set_structures(layers.values())
        self.ws.window.structure_list.set_volumes({s.name: s.volume_cc(patient.grid)
                                                   for s in patient.structures.values()})

    def _start_dvh_if_patient(self) -> None:
        if self.ws.session.has_patient:
            self._start_dvh()

    def _show_active_dose(self) -> None:
        session = self.ws.session
        active = session.active()
        ref = session.reference_dose_gy()
        if active is None:
            self.model.set_dose(None)
        else:
            self.model.set_dose(active.dose.dose_gy, ref if ref > 0 else None, active.label)
        self._update_volume_scene()
        self._update_goal_markers()
        self.ws.update_actions()

    def _update_volume_scene(self) -> None:
        patient = self.ws.session.patient
        if patient is None:
            return
        surfaces = [(layer.name, layer.mask, layer.color) for layer in self.model.structures.values() if layer.visible]
        iso = None
        if self.model.dose_gy is not None and self.model.reference_gy > 0:
            iso = (self.model.dose_gy, 0.95 * self.model.reference_gy)
        beams = []
        active = self.ws.session.active()
        for b in (active.info.get("beams", []) if active else []):
            beams.append((b.get("gantry_deg", 0.0), b.get("couch_deg", 0.0), b.get("isocenter_mm", (0, 0, 0))))
        self.ws.window.volume_view.set_scene(patient.grid, surfaces, iso, beams)

    # -- DVH -----------------------------------------------------------------------------------
    def _start_dvh(self) -> None:
        session = self.ws.session
        if self._dvh_task is not None and self._dvh_task.running:
            self._dvh_task.cancel()
        plans = [(k, p.label, p.dose.dose_gy) for k, p in session.plans.items()]
        if not plans:
            self.ws.window.dvh_panel.set_curves([])
            self.ws.window.dvh_panel.set_endpoints(ENDPOINT_COLUMNS, [])
            return
        self._dvh_task = self.ws.runner.run("Computing DVHs", dvh_task, session.patient, plans,
                                            session.reference_dose_gy(), on_success=self._on_dvh,
                                            on_failure=lambda e: self.ws.show_error(e, "DVH calculation failed"))

    def _on_dvh(self, result) -> None:
        panel = self.ws.window.dvh_panel
        curves = [DvhCurve(c["structure"], c["plan"], c["color"], c["dose_gy"], c["volume_pct"])
                  for c in result["curves"]]
        panel.set_curves(curves)
        panel.set_endpoints(ENDPOINT_COLUMNS, result["rows"])
        self._sync_dvh_visibility()

    def _sync_dvh_visibility(self) -> None:
        # The DVH shows the structures shown in the image views: one visibility list.
        self.ws.window.dvh_panel.set_visible_structures(
            [n for n, layer in self.model.structures.items() if layer.visible])

    # -- goals ------------------------------------------------------------------------------
    def set_goals(self, goals) -> None:
        self.goals = list(goals)
        self._update_goal_markers()

    def _update_goal_markers(self) -> None:
        patient = self.ws.session.patient
        if patient is None:
            return
        dose = self.model.dose_gy
        try:
            markers = goal_markers(self.goals, patient, None if dose is None else np.asarray(dose))
        except Exception as exc:  # noqa: BLE001 - a goal that cannot be drawn must not break the view
            self.ws.show_error(exc, "Could not draw the goals")
            markers = []
        self.ws.window.dvh_panel.set_goals(markers)

    def centre_on_structure(self, name: str) -> None:
        """Move the crosshair (all three slices) to a structure's centre of mass."""
        layer = self.model.structures.get(name)
        if layer is None or not layer.mask.any():
            return
        self.model.set_cursor(np.argwhere(layer.mask).mean(axis=0))

    # -- handlers named in the action table ---------------------------------------------------
    def preset_soft_tissue(self) -> None:
        self.model.apply_preset("soft tissue")

    def preset_lung(self) -> None:
        self.model.apply_preset("lung")

    def preset_bone(self) -> None:
        self.model.apply_preset("bone")

    def dose_isodose(self) -> None:
        self.model.set_dose_display(mode="isodose")

    def dose_wash(self) -> None:
        self.model.set_dose_display(mode="wash")

    def dose_off(self) -> None:
        self.model.set_dose_display(mode="off")

    def reset_views(self) -> None:
        for v in self.ws.window.viewer.views.values():
            v.reset_view()
