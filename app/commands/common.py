"""Arguments and output helpers shared by the sub-commands."""

from __future__ import annotations

import json
import sys

import numpy as np


def add_json(p) -> None:
    p.add_argument("--json", action="store_true", help="print exactly one JSON document on stdout")


def add_device(p) -> None:
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default auto)")


def add_phantom_file(p) -> None:
    p.add_argument("--phantom-file", default=None,
                   help="the TG-119 phantom npz for PATIENT=phantom:tg119")


def _default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")


def emit_json(obj) -> None:
    """Write one JSON document to stdout (NaN written as null, as strict JSON needs)."""
    sys.stdout.write(json.dumps(_sanitize(obj), default=_default, indent=2) + "\n")
    sys.stdout.flush()


def _sanitize(o):
    if isinstance(o, float) and not np.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _sanitize(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_sanitize(v) for v in o]
    if isinstance(o, np.floating):
        return _sanitize(float(o))
    return o


def progress_for(args):
    """A core Progress drawing on stderr (the bar hides itself when stderr is no terminal)."""
    from core.progress import Progress, StderrBar

    return Progress(StderrBar())


def warn(message: str) -> None:
    print(f"openatp: warning: {message}", file=sys.stderr)
