"""The one place that probes CUDA: ``cpu|cuda|auto`` -> ``torch.device``."""

from __future__ import annotations

from core.errors import InputError


def resolve_device(spec: str = "auto"):
    """Return the ``torch.device`` for ``spec`` (``cpu``, ``cuda``, ``cuda:N`` or ``auto``).

    ``auto`` picks CUDA when a GPU is usable, else CPU. Asking for ``cuda`` on a machine
    without one is an :class:`InputError`, not a silent fallback: the planner asked for it.
    """
    import torch

    spec = (spec or "auto").lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError("--device cuda was asked for, but no CUDA GPU is available on this machine; "
                             "use --device cpu or auto")
        return torch.device(spec)
    raise InputError(f"unknown device '{spec}'; use cpu, cuda or auto")


def device_name(device) -> str:
    """Short human-readable name: ``cpu`` or ``cuda (NVIDIA H200)``."""
    import torch

    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return "cpu"
