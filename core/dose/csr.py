"""Sparse CSR tensors that torch's CPU matrix-vector product reads safely.

Why: with int32 indices, ``torch.mv`` on a CPU CSR tensor runs MKL's AVX-512 kernel
(``mkl_sparse_s_csr_ng_n_mv_ker_i4_avx512``), which loads the column indices 64 bytes at a
time and so may read past the end of the array. When the array ends within those bytes of
the end of its memory mapping, the read faults and the process dies (a segfault, seen once
in 33 plans, ``bench/pipeline.py`` pt_209, and reproduced with a guard page by
``tests/core/dose/test_csr.py``). Every CSR matrix the planning core builds goes through
:func:`csr_tensor`, which moves an index or value array that ends that close to a page
boundary into a buffer with slack behind it. Only such arrays are copied,
so the dose matrix is not held twice (an end lands that close in about 1 of 32 arrays).
"""

from __future__ import annotations

import mmap

#: bytes that must stay readable behind an array's end: one AVX-512 vector, doubled
SLACK_BYTES = 128


def _too_close_to_page_end(t) -> bool:
    end = t.data_ptr() + t.numel() * t.element_size()
    return (-end) % mmap.PAGESIZE < SLACK_BYTES


def with_slack(t):
    """``t`` (1-D, contiguous), or on the CPU, when its end lies within :data:`SLACK_BYTES` of
    a page boundary, an equal tensor that is a view into a buffer with slack behind it."""
    import torch

    if t.device.type != "cpu" or not _too_close_to_page_end(t):
        return t
    pad = -(-SLACK_BYTES // t.element_size())
    buf = torch.empty(t.numel() + pad, dtype=t.dtype)
    buf[:t.numel()] = t
    return buf[:t.numel()]


def csr_tensor(crow, col, val, size, device=None):
    """``torch.sparse_csr_tensor`` with the column indices and values given slack
    (:func:`with_slack`) when the matrix lives on the CPU."""
    import torch

    dev = torch.device(device) if device is not None else val.device
    if dev.type == "cpu":
        col, val = with_slack(col.cpu().contiguous()), with_slack(val.cpu().contiguous())
    return torch.sparse_csr_tensor(crow, col, val, size=size, device=dev)
