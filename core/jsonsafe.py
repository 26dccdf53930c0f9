"""Plain JSON from results that hold numpy values and NaN/inf (strict JSON has neither)."""

from __future__ import annotations

import json
import math


def json_safe(o):
    """``o`` with numpy scalars/arrays as Python values, tuples as lists, keys as strings,
    and non-finite floats as ``None`` (written ``null``)."""
    import numpy as np

    if isinstance(o, dict):
        return {str(k): json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [json_safe(v) for v in o]
    if isinstance(o, np.ndarray):
        return json_safe(o.tolist())
    if isinstance(o, np.generic):
        return json_safe(o.item())
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o


def dumps(o, indent: int | None = 2) -> str:
    return json.dumps(json_safe(o), indent=indent)
