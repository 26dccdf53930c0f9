"""Open a shown workstation window for a test (headless: errors are collected, not shown)."""


def open_workstation(qtbot):
    from app.application import Workstation, ensure_qapp

    ensure_qapp()
    ws = Workstation(headless=True, theme="dark")
    qtbot.addWidget(ws.window)
    ws.window.resize(1400, 900)
    ws.window.show()
    qtbot.waitExposed(ws.window)
    return ws
