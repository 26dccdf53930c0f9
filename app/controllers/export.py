"""Export of the shown plan as DICOM: CT, RTSTRUCT, RTPLAN and RTDOSE, off the GUI thread.

The planner picks a folder; the files go into a new sub-folder named after the patient
and the plan (``pt_201 plan 1``), written with :func:`core.io.atomic.atomic_directory`, so
the export appears complete or not at all and never overwrites an earlier one. The four
objects reference each other (the core exporters share one study, frame of reference and
UID set through ``patient.dicom``): the RTSTRUCT references the exported CT series, the
RTPLAN the RTSTRUCT, the RTDOSE the RTPLAN.

An RTPLAN needs beams and MLC segments: plans made by the pipeline carry them in their
``PlanResult`` (``PlanEntry.info["result"]``), plans reopened from a project in
``info["beam_set"]`` / ``info["segmented_beams"]``. A dose without them (a clinical
reference dose, a dose file) is exported without an RTPLAN, and the planner is told why.
"""

from __future__ import annotations

import re
from pathlib import Path

from PySide6.QtCore import QObject
from PySide6.QtWidgets import QFileDialog


def plan_delivery(entry) -> tuple | None:
    """``(BeamSet, [SegmentedBeam])`` of a session plan, or None when it has no beams."""
    info = getattr(entry, "info", None) or {}
    result = info.get("result")
    dij = getattr(result, "dij", None)
    segs = getattr(result, "segmented_beams", None)
    if dij is not None and getattr(dij, "beams", None) is not None and segs:
        return dij.beams, list(segs)
    if info.get("beam_set") and info.get("segmented_beams"):
        from core.delivery.segments import SegmentedBeam
        from core.dose.beams import BeamSet

        return BeamSet.from_dict(info["beam_set"]), [SegmentedBeam.from_dict(d) for d in info["segmented_beams"]]
    return None


def export_folder_name(patient_id: str, plan_label: str) -> str:
    """A portable folder name: letters, digits, space, dot, dash and underscore only."""
    raw = f"{patient_id} {plan_label}".strip()
    name = re.sub(r"[^A-Za-z0-9 ._-]+", "_", raw).strip(" .") or "export"
    return name[:80]


def unique_folder(parent: Path, name: str) -> Path:
    """``parent/name``, or ``parent/name (2)`` ... when that exists: an export never replaces another."""
    target = parent / name
    n = 2
    while target.exists():
        target = parent / f"{name} ({n})"
        n += 1
    return target


def export_task(patient, dose, delivery, target, include_ct: bool = True, progress=None, cancel=None) -> dict:
    """Worker body: write the DICOM objects of one plan into the new folder ``target``.

    Parameters
    ----------
    patient : core.patient.Patient
    dose : core.patient.Dose
        The plan's dose (on the patient grid).
    delivery : (BeamSet, list of SegmentedBeam) or None
        The plan's beams and segments; None writes no RTPLAN.
    target : str or Path
        Must not exist yet; created complete or not at all.
    include_ct : bool
        Write the CT series too (skipped, with a note, for a patient without images).

    Returns
    -------
    dict with ``folder``, ``files`` (names), ``notes`` (what was left out and why).
    """
    from core.errors import InputError
    from core.io.atomic import atomic_directory
    from core.io.dicom_export import export_ct_series, export_rtdose, export_rtstruct
    from core.progress import check_cancel, report

    target = Path(target)
    if target.exists():
        raise InputError("the export folder exists already; pick another folder", target)
    notes = []
    files = []
    steps = 4
    with atomic_directory(target) as tmp:
        if include_ct and patient.ct is not None:
            files += [p.name for p in export_ct_series(patient, tmp, cancel=cancel)]
        elif include_ct:
            notes.append("no CT images in this patient: CT series left out")
        report(progress, 1, steps, "CT written")
        check_cancel(cancel)
        files.append(export_rtstruct(patient, tmp / "RTSTRUCT.dcm", cancel=cancel).name)
        report(progress, 2, steps, "RTSTRUCT written")
        check_cancel(cancel)
        plan_uid = None
        if delivery is not None:
            from core.io.rtplan_export import export_rtplan

            beams, segmented = delivery
            files.append(export_rtplan(patient, beams, segmented, tmp / "RTPLAN.dcm",
                                       plan_label=dose.label[:16] or "OpenATP").name)
            plan_uid = patient.dicom.get("rtplan_sop_instance_uid")
        else:
            notes.append(f"'{dose.label}' has no beams or MLC segments (it was not planned in OpenATP): "
                         "RTPLAN left out")
        report(progress, 3, steps, "RTPLAN written")
        check_cancel(cancel)
        files.append(export_rtdose(dose, patient, tmp / "RTDOSE.dcm", plan_sop_instance_uid=plan_uid).name)
        report(progress, 4, steps, "RTDOSE written")
        check_cancel(cancel)
    return {"folder": str(target), "files": files, "notes": notes}


class ExportController(QObject):
    """Handlers ``export.*`` of the action table."""

    def __init__(self, workstation):
        super().__init__(workstation)
        self.ws = workstation
        self.last_export: dict | None = None

    def export_dialog(self) -> None:
        """Ask for a folder, then export the plan the views show."""
        session = self.ws.session
        if not session.has_patient or session.active() is None:
            self.ws.notify("no plan to export: open a patient with a dose or run a plan")
            return
        start = str(Path(self.last_export["folder"]).parent) if self.last_export else ""
        folder = QFileDialog.getExistingDirectory(self.ws.window, "Export DICOM into folder", start)
        if folder:
            self.export_to(folder)

    def export_to(self, folder, include_ct: bool = True):
        """Export the active plan into a new sub-folder of ``folder``; returns the task."""
        session = self.ws.session
        entry = session.active()
        if entry is None:
            return None
        try:
            delivery = plan_delivery(entry)
        except Exception as exc:  # noqa: BLE001 - damaged beams: say so, export the rest
            self.ws.notify(f"the plan's beams cannot be read ({exc}): RTPLAN left out")
            delivery = None
        target = unique_folder(Path(folder), export_folder_name(session.patient.patient_id, entry.label))
        session.set_state(f"exporting {entry.label}")
        return self.ws.runner.run("Exporting DICOM", export_task, session.patient, entry.dose, delivery, target,
                                  include_ct, on_success=self._on_exported, on_failure=self._on_failed,
                                  on_cancel=lambda _e: session.set_state("export cancelled"))

    def _on_exported(self, result: dict) -> None:
        self.last_export = result
        self.ws.session.set_state(f"exported {len(result['files'])} files")
        self.ws.notify(f"exported {len(result['files'])} DICOM files to {result['folder']}"
                       + ("; " + "; ".join(result["notes"]) if result["notes"] else ""))

    def _on_failed(self, exc) -> None:
        self.ws.session.set_state("export failed")
        self.ws.show_error(exc, "Export failed")
