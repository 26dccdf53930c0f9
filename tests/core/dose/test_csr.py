"""CSR matrices the CPU matrix-vector product reads safely (core/dose/csr.py).

MKL's AVX-512 CSR kernel behind ``torch.mv`` reads up to a vector past the end of the
column indices. The subprocess test places the indices so that they end exactly at a page
that may not be read (a guard page): built with ``torch.sparse_csr_tensor`` the product
segfaults on this machine (measured: exit -11), built with ``csr_tensor`` it must not. On a
CPU without AVX-512 both pass.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from core.dose.csr import SLACK_BYTES, csr_tensor, with_slack  # noqa: E402

_GUARDED = textwrap.dedent("""
    import ctypes, mmap, sys
    import numpy as np, torch
    from core.dose.csr import csr_tensor
    libc = ctypes.CDLL(None)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    P = mmap.PAGESIZE

    def ending_at_a_guard_page(a):
        pages = (a.nbytes + P - 1) // P + 1
        m = mmap.mmap(-1, pages * P)
        base = ctypes.addressof(ctypes.c_char.from_buffer(m))
        assert libc.mprotect(base + (pages - 1) * P, P, 0) == 0
        b = np.frombuffer(m, dtype=a.dtype, count=a.size, offset=(pages - 1) * P - a.nbytes)
        b[:] = a
        ending_at_a_guard_page.keep.append(m)
        return b
    ending_at_a_guard_page.keep = []

    rng = np.random.default_rng(0)
    nr, nc, k = 20000, 3001, 13
    crow = np.arange(0, nr * k + 1, k, dtype=np.int32)
    col = np.sort(rng.integers(0, nc, size=(nr, k)), axis=1).astype(np.int32).ravel()
    val = rng.random(nr * k).astype(np.float32)
    make = csr_tensor if sys.argv[1] == "csr_tensor" else torch.sparse_csr_tensor
    a = make(torch.from_numpy(crow), torch.from_numpy(ending_at_a_guard_page(col)), torch.from_numpy(val), (nr, nc))
    x = rng.random(nc).astype(np.float32)
    y = torch.mv(a, torch.from_numpy(x)).numpy()
    assert np.allclose(y, np.add.reduceat(val * x[col], crow[:-1]), rtol=1e-4)
    print("ok")
""")


def test_the_product_survives_indices_that_end_at_an_unreadable_page(tmp_path):
    script = tmp_path / "guarded.py"
    script.write_text(_GUARDED)
    r = subprocess.run([sys.executable, "-W", "ignore", str(script), "csr_tensor"], capture_output=True, text=True,
                       timeout=120, cwd=str(Path(__file__).resolve().parents[3]))
    assert r.returncode == 0 and r.stdout.strip() == "ok", (r.returncode, r.stderr[-2000:])


def test_slack_is_added_only_where_an_array_ends_near_a_page_boundary():
    import mmap

    page = mmap.PAGESIZE
    m = mmap.mmap(-1, 2 * page)
    raw = np.frombuffer(m, dtype=np.int32, count=100, offset=page - 400)  # ends on the boundary
    raw[:] = np.arange(100)
    t = torch.from_numpy(raw)
    s = with_slack(t)
    assert torch.equal(s, t) and s.data_ptr() != t.data_ptr()
    end = s.storage_offset() * 4 + s.numel() * 4
    assert s.untyped_storage().nbytes() - end >= SLACK_BYTES
    mid = torch.from_numpy(np.frombuffer(m, dtype=np.int32, count=100, offset=page - 2000))
    assert with_slack(mid).data_ptr() == mid.data_ptr()  # 1600 bytes before the boundary: left alone
    a = csr_tensor(torch.tensor([0, 1, 2]), torch.tensor([1, 0]), torch.tensor([2.0, 3.0]), (2, 2))
    assert torch.equal(a.to_dense(), torch.tensor([[0.0, 2.0], [3.0, 0.0]]))
