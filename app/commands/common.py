"""Arguments and output helpers shared by the sub-commands."""

from __future__ import annotations

import sys


def add_json(p) -> None:
    p.add_argument("--json", action="store_true", help="print exactly one JSON document on stdout")


def add_device(p) -> None:
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default auto)")


def add_phantom_file(p) -> None:
    p.add_argument("--phantom-file", default=None,
                   help="the TG-119 phantom npz for PATIENT=phantom:tg119")


def emit_json(obj) -> None:
    """Write one JSON document to stdout (NaN written as null, as strict JSON needs)."""
    from core.jsonsafe import dumps

    sys.stdout.write(dumps(obj) + "\n")
    sys.stdout.flush()


def progress_for(args):
    """A core Progress drawing on stderr (the bar hides itself when stderr is no terminal)."""
    from core.progress import Progress, StderrBar

    return Progress(StderrBar())


def warn(message: str) -> None:
    print(f"openatp: warning: {message}", file=sys.stderr)
