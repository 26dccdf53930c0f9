"""Hold OpenBLAS to one thread while L-BFGS-B runs.

SciPy's L-BFGS-B calls OpenBLAS for tiny vector operations; with OpenBLAS's thread
pool spinning next to torch's OpenMP pool, each call costs milliseconds instead of
microseconds (measured: 3.7 ms per ``setulb`` call for 196 variables on 2 cores, 8 s of a
9 s run). One thread removes that overhead. This is what ``threadpoolctl`` does; it is
not a dependency of the project, so the few lines are here. Linux/macOS only; a no-op
wherever the library or symbol is not found.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys

_PREFIXES = ("scipy_openblas_", "scipy_openblas64_", "openblas_", "openblas64_")


def _openblas_libs() -> list[str]:
    paths = set()
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            for line in f:
                p = line.split()[-1]
                if "openblas" in p.lower() and (p.endswith(".so") or ".so." in p):
                    paths.add(p)
    except OSError:
        return []
    return sorted(paths)


def _controls():
    out = []
    if not sys.platform.startswith("linux"):
        return out
    for path in _openblas_libs():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for pre in _PREFIXES:
            get = getattr(lib, f"{pre}get_num_threads", None)
            set_ = getattr(lib, f"{pre}set_num_threads", None)
            if get is not None and set_ is not None:
                get.restype = ctypes.c_int
                set_.argtypes = [ctypes.c_int]
                out.append((get, set_))
                break
    return out


@contextlib.contextmanager
def single_thread_blas():
    """Context manager: OpenBLAS pools at one thread inside, restored on exit."""
    saved = []
    for get, set_ in _controls():
        try:
            saved.append((set_, int(get())))
            set_(1)
        except Exception:  # noqa: BLE001 - a missing control only costs speed
            continue
    try:
        yield
    finally:
        for set_, n in saved:
            set_(n)


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Context manager: torch's intra-op pool at ``n`` threads inside (``None``: unchanged)."""
    if n is None:
        yield
        return
    import torch

    prev = torch.get_num_threads()
    if prev == n:
        yield
        return
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(prev)
