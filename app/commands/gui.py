"""``openatp gui [PATIENT] [--screenshot FILE]``: the planning workstation window.

PySide6 is imported only inside :func:`run`, so ``openatp --help`` and the headless
commands never pay for Qt.
"""

from __future__ import annotations

from app.commands.common import add_device, add_phantom_file


def register(subparsers) -> None:
    p = subparsers.add_parser("gui", help="open the planning workstation (optionally with PATIENT)",
                              description="Open the planning workstation window.")
    p.add_argument("patient", nargs="?", default=None, help="PATIENT to load (see docs/cli.md)")
    p.add_argument("--screenshot", metavar="FILE", default=None,
                   help="load, render the window, save it as a PNG and exit")
    p.add_argument("--theme", choices=["dark", "light"], default=None, help="colour theme (default: last used)")
    p.add_argument("--size", default="1600x1000", help="window size WxH for --screenshot (default 1600x1000)")
    p.add_argument("--panel", choices=["dvh", "3d"], default=None, help="panel to bring to the front")
    add_phantom_file(p)
    add_device(p)
    p.set_defaults(func=run)


def _size(text: str) -> tuple[int, int]:
    from core.errors import InputError

    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InputError(f"--size must look like 1600x1000, got '{text}'") from None
    if not (320 <= w <= 8000 and 240 <= h <= 8000):
        raise InputError(f"--size {text} is outside 320x240 .. 8000x8000")
    return w, h


def run(args) -> int:
    size = _size(args.size)
    from app.application import run_gui

    return run_gui(patient=args.patient, screenshot=args.screenshot, phantom_file=args.phantom_file,
                   theme=args.theme, size=size, panel=args.panel, device=args.device)
