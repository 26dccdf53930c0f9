"""Progress bar, message, ETA and a cancel button for one long task.

The widget knows nothing about threads: connect a task's ``progress(float, str, object)``
signal to :meth:`TaskProgress.on_progress` and its end to :meth:`TaskProgress.on_done`;
the cancel button emits ``cancelRequested``.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QToolButton, QWidget

from widgets.icons import icon


def format_eta(eta_s) -> str:
    """``"ETA 1:05"`` style text, or ``""`` when unknown."""
    if eta_s is None or eta_s != eta_s or eta_s < 0:
        return ""
    eta_s = int(round(eta_s))
    if eta_s >= 3600:
        return f"ETA {eta_s // 3600}:{(eta_s % 3600) // 60:02d}:{eta_s % 60:02d}"
    return f"ETA {eta_s // 60}:{eta_s % 60:02d}"


class TaskProgress(QWidget):
    """Shows one running task.

    Signals
    -------
    cancelRequested()
        The planner pressed cancel (the button then disables itself until the next task).
    """

    cancelRequested = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self._setup_ui()
        self.reset()

    def _setup_ui(self) -> None:
        lay = QHBoxLayout(self)
        lay.setContentsMargins(4, 0, 4, 0)
        lay.setSpacing(6)
        self.title_label = QLabel()
        self.title_label.setObjectName("taskTitle")
        self.bar = QProgressBar()
        self.bar.setRange(0, 1000)
        self.bar.setTextVisible(True)
        self.bar.setMaximumWidth(220)
        self.message_label = QLabel()
        self.message_label.setMinimumWidth(120)
        self.eta_label = QLabel()
        self.cancel_button = QToolButton()
        self.cancel_button.setIcon(icon("cancel"))
        self.cancel_button.setText("Cancel")
        self.cancel_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.cancel_button.setToolTip("Stop this task (the last good result is kept)")
        self.cancel_button.clicked.connect(self._on_cancel_clicked)
        for w in (self.title_label, self.bar, self.message_label, self.eta_label, self.cancel_button):
            lay.addWidget(w)

    def start(self, title: str) -> None:
        self.title_label.setText(title)
        self.bar.setValue(0)
        self.bar.setFormat("%p %")
        self.message_label.setText("starting")
        self.eta_label.setText("")
        self.cancel_button.setEnabled(True)
        self.setVisible(True)

    def on_progress(self, fraction: float, message: str, eta_s) -> None:
        self.bar.setValue(int(round(min(max(fraction, 0.0), 1.0) * 1000)))
        self.message_label.setText(message)
        self.eta_label.setText(format_eta(eta_s))

    def on_done(self, *_args) -> None:
        self.reset()

    def reset(self) -> None:
        self.title_label.setText("")
        self.message_label.setText("")
        self.eta_label.setText("")
        self.bar.setValue(0)
        self.cancel_button.setEnabled(False)
        self.setVisible(False)

    def _on_cancel_clicked(self) -> None:
        self.cancel_button.setEnabled(False)
        self.message_label.setText("cancelling")
        self.cancelRequested.emit()
