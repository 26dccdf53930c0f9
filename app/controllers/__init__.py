"""Flows that connect the session, the workers and the window: patients, display, planning."""
