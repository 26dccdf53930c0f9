"""Many goal penalties at once, value and gradient, in a fixed number of tensor operations.

Why: on a GPU the optimizer is bound by kernel launches, not arithmetic. Measured on an
H200 (pt_201, 18 goals, 15 M matrix entries): the sparse product took 0.15 ms, one
objective evaluation 17 ms, 9.4 ms of it in autograd's backward pass over the ~20 small
graphs of ``objectives.goal_penalty``, and the callback's per-goal ``achieved`` another
2.5 ms a step. Here every goal of a level is one segment of a single concatenated voxel
vector: one gather, one segmented selection of the order statistics (one sort on a GPU;
``kthvalue``/``topk`` per goal on a CPU, which selects in O(n)), a handful of element-wise
operations, segment sums, and the gradient written out by hand (no autograd).

The penalties are exactly those of :func:`core.optimization.objectives.goal_penalty`,
gradient conventions included (``torch.minimum``/``maximum`` split a tie's gradient in
half; the quantile's gradient reaches the voxels at its order statistics), so that the
tests can hold the two to round-off.
"""

from __future__ import annotations

import numpy as np

from core.goals.goal import GoalKind

# kind codes of a segment
_ALARA, _MAX_MEAN, _MIN_MEAN, _MAX_DVH, _MIN_DVH, _MAX_VAD, _NONE = range(7)
_ORDER_KINDS = (_MAX_DVH, _MIN_DVH, _MAX_VAD)
# sort key spacing between segments (Gy): far above any dose, far below float64 resolution limits
_SEG_KEY = 1.0e6


def _kind_code(kind: GoalKind) -> int:
    return {GoalKind.ALARA: _ALARA, GoalKind.MAX_MEAN: _MAX_MEAN, GoalKind.MIN_MEAN: _MIN_MEAN,
            GoalKind.MAX_DOSE_AT_VOLUME: _MAX_DVH, GoalKind.MIN_DOSE_AT_VOLUME: _MIN_DVH,
            GoalKind.MAX_VOLUME_AT_DOSE: _MAX_VAD}[kind]


class GoalBatch:
    """The goals ``entries = [(term, value)]`` (``value`` None: the goal's own) on a dose
    vector of the optimizer's rows.

    ``penalties(d)`` returns each entry's penalty (float64 tensor, as ``goal_penalty``);
    ``gradient(coef)`` then returns ``d/dd sum_e coef_e P_e`` for the same ``d``.
    ``achieved(d)`` returns each entry's achieved value as ``achieved_torch`` does.
    ``use_sort`` (default: on CUDA) selects order statistics by one segmented sort.
    """

    def __init__(self, entries, device, use_sort: bool | None = None):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.use_sort = self.device.type == "cuda" if use_sort is None else bool(use_sort)
        specs = [self._spec(term, value) for term, value in entries]
        # order-statistic segments first: their voxels form one contiguous block
        order = sorted(range(len(entries)), key=lambda i: specs[i]["k"] not in _ORDER_KINDS)
        self.perm = np.asarray(order, dtype=np.int64)          # segment k is entry perm[k]
        self.perm_t = torch.as_tensor(self.perm, device=self.device)
        inv = np.empty_like(self.perm)
        inv[self.perm] = np.arange(self.perm.size)
        self.inv_perm_t = torch.as_tensor(inv, device=self.device)   # entry i is segment inv[i]
        col = {key: [specs[i][key] for i in order] for key in ("k", "thr", "sgn", "s", "n", "lo", "hi", "frac", "x")}
        kinds, thr, sgn, scale, n = col["k"], col["thr"], col["sgn"], col["s"], col["n"]
        lo, hi, frac, vad_x = col["lo"], col["hi"], col["frac"], col["x"]
        rows = [entries[i][0].rows.to(self.device) for i in order]
        self.kinds = np.asarray(kinds)
        self.n_seg = len(kinds)
        self.n_order = int(sum(k in _ORDER_KINDS for k in kinds))
        n_arr = np.asarray(n, dtype=np.int64)
        self.off = np.concatenate([[0], np.cumsum(n_arr)]).astype(np.int64)
        self.n_order_vox = int(self.off[self.n_order])
        f64 = dict(dtype=torch.float64, device=self.device)
        self.rows = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long, device=self.device)
        self.seg = torch.repeat_interleave(torch.arange(self.n_seg, device=self.device),
                                           torch.as_tensor(n_arr, device=self.device))
        self.thr = torch.tensor(thr, **f64)
        self.sgn = torch.tensor(sgn, **f64)
        self.inv_s2 = torch.tensor([1.0 / s ** 2 for s in scale], **f64)
        self.n_t = torch.tensor(n_arr, **f64)
        self.is_none = torch.tensor([k == _NONE for k in kinds], device=self.device)
        no = self.n_order
        self.lo_pos = torch.as_tensor(self.off[:no] + np.asarray(lo[:no], dtype=np.int64), device=self.device)
        self.hi_pos = torch.as_tensor(self.off[:no] + np.asarray(hi[:no], dtype=np.int64), device=self.device)
        self.frac = torch.tensor(frac[:no], **f64)
        self.lo_host, self.hi_host, self.frac_host = lo[:no], hi[:no], frac[:no]
        self.vad_x = torch.tensor(vad_x, **f64)
        self.is_vad_o = torch.as_tensor(self.kinds[:self.n_order] == _MAX_VAD, device=self.device)
        self.any_none = bool((self.kinds == _NONE).any())
        seg_o = self.seg[:self.n_order_vox]
        self.seg_o = seg_o
        self.is_min_o = self.sgn.index_select(0, seg_o) < 0
        self.sort_key_base = seg_o.to(torch.float64) * _SEG_KEY
        self.seg_m = self.seg[self.n_order_vox:]
        self._cache = None

    @staticmethod
    def _spec(term, value) -> dict:
        g = term.goal
        k = _kind_code(g.kind)
        v = g.value if value is None else value
        m = term.n
        lo, hi, frac = 0, 0, 0.0
        x = float(g.dose_gy) if k == _MAX_VAD else 0.0
        if k in (_MAX_DVH, _MIN_DVH):
            pos = term.quantile_q() * (m - 1)
            lo = int(np.floor(pos))
            hi = min(lo + 1, m - 1)
            frac = pos - lo
        elif k == _MAX_VAD:
            allowed = int(np.floor(v * m / 100.0 + 1e-9))    # voxels allowed at >= x
            if allowed >= m:
                k = _NONE          # every voxel may be hot: always met
            else:
                lo = hi = m - 1 - allowed                     # the (allowed+1)-th hottest, ascending
            v = g.dose_gy
        return {"k": k, "thr": 0.0 if k in (_ALARA, _NONE) else float(v),
                "sgn": -1.0 if k in (_MIN_MEAN, _MIN_DVH) else 1.0, "s": float(term.scale_gy), "n": m,
                "lo": lo, "hi": hi, "frac": frac, "x": x}

    # -- order statistics -------------------------------------------------------------
    def _order_stats(self, dv):
        """Values and voxel positions (into the concatenated vector) of each order segment's
        two order statistics ``lo`` and ``hi``."""
        torch = self.torch
        no = self.n_order
        if no == 0:
            z = torch.zeros(0, dtype=torch.float64, device=self.device)
            zi = torch.zeros(0, dtype=torch.long, device=self.device)
            return z, z, zi, zi
        if self.use_sort:
            idx = torch.sort(self.sort_key_base + dv[:self.n_order_vox]).indices
            ia, ib = idx.index_select(0, self.lo_pos), idx.index_select(0, self.hi_pos)
            return dv.index_select(0, ia), dv.index_select(0, ib), ia, ib
        a_i, b_i = [], []
        for k in range(no):
            o0, o1 = int(self.off[k]), int(self.off[k + 1])
            seg = dv[o0:o1]
            m = o1 - o0
            lo, hi = self.lo_host[k], self.hi_host[k]
            if m - lo <= 64:     # a hot end: the few largest, descending (as objectives.quantile)
                top = torch.topk(seg, m - lo, largest=True, sorted=True)
                ja, jb = top.indices[m - lo - 1], top.indices[m - hi - 1]
            else:
                ja = torch.kthvalue(seg, lo + 1).indices
                jb = torch.kthvalue(seg, hi + 1).indices if (hi != lo and self.frac_host[k] > 0) else ja
            a_i.append(ja + o0)
            b_i.append(jb + o0)
        ia, ib = torch.stack(a_i), torch.stack(b_i)
        return dv.index_select(0, ia), dv.index_select(0, ib), ia, ib

    def _quantiles(self, dv):
        a, b, ia, ib = self._order_stats(dv)
        q = a + (b - a) * self.frac    # frac 0: a alone
        return q, ia, ib

    def _seg_sum(self, x, seg, size):
        torch = self.torch
        return torch.zeros(size, dtype=torch.float64, device=self.device).index_add_(0, seg, x)

    # -- penalties and gradient ---------------------------------------------------------
    def penalties(self, d):
        """(n_seg,) float64 penalties, in the order of the entries given."""
        torch = self.torch
        dv = d.index_select(0, self.rows).double()
        p = torch.zeros(self.n_seg, dtype=torch.float64, device=self.device)
        cache = {"dv": dv}
        if self.n_order:
            q, ia, ib = self._quantiles(dv)
            do = dv[:self.n_order_vox]
            qv = q.index_select(0, self.seg_o)
            c = torch.where(self.is_min_o, torch.maximum(do, qv), torch.minimum(do, qv))
            sg = self.sgn.index_select(0, self.seg_o)
            r = torch.relu(sg * (c - self.thr.index_select(0, self.seg_o)))
            po = self._seg_sum(r * r, self.seg_o, self.n_order)
            p[:self.n_order] = po * self.inv_s2[:self.n_order] / self.n_t[:self.n_order]
            cache.update(q=q, qv=qv, ia=ia, ib=ib, r_o=r, sg_o=sg)
        if self.n_order_vox < dv.numel():
            no = self.n_order
            mean = self._seg_sum(dv[self.n_order_vox:], self.seg_m, self.n_seg)[no:] / self.n_t[no:]
            r = torch.relu(self.sgn[no:] * (mean - self.thr[no:]))
            p[no:] = torch.where(self.is_none[no:], 0.0, r * r * self.inv_s2[no:])
            cache.update(r_m=r)
        self._cache = cache
        return p.index_select(0, self.inv_perm_t)

    def gradient(self, coef, n_rows: int):
        """``d/dd sum_e coef_e P_e`` at the last ``penalties`` call: (n_rows,) float64.
        ``coef``: (n_entries,) float64 tensor in the order of the entries."""
        torch = self.torch
        cache = self._cache
        coef = coef.to(torch.float64).index_select(0, self.perm_t)
        dv = cache["dv"]
        gv = torch.zeros_like(dv)
        no = self.n_order
        if no:
            do = dv[:self.n_order_vox]
            qv = cache["qv"]
            # dP/dc per voxel, c = min(d, q) (max goals) or max(d, q) (min goals)
            w = (coef[:no] * self.inv_s2[:no] * 2.0 / self.n_t[:no]).index_select(0, self.seg_o)
            dp_dc = w * cache["r_o"] * cache["sg_o"]
            # share of c's derivative that goes to d (the rest goes to q); a tie splits it
            to_d = torch.where(do == qv, 0.5, torch.where(self.is_min_o, (do > qv).double(), (do < qv).double()))
            gv[:self.n_order_vox] = dp_dc * to_d
            gq = self._seg_sum(dp_dc * (1.0 - to_d), self.seg_o, no)
            gv.index_add_(0, cache["ia"], gq * (1.0 - self.frac))
            gv.index_add_(0, cache["ib"], gq * self.frac)
        if self.n_order_vox < dv.numel():
            r = cache["r_m"]
            dp_dm = torch.where(self.is_none[no:], 0.0, coef[no:] * 2.0 * r * self.sgn[no:] * self.inv_s2[no:]
                                / self.n_t[no:])
            full = torch.zeros(self.n_seg, dtype=torch.float64, device=self.device)
            full[no:] = dp_dm
            gv[self.n_order_vox:] = full.index_select(0, self.seg_m)
        return torch.zeros(n_rows, dtype=torch.float64, device=self.device).index_add_(0, self.rows, gv)

    # -- achieved values --------------------------------------------------------------
    def _achieved_tensor(self, dv, q):
        """Each entry's achieved value (Gy, or % for volume-at-dose), float64 tensor in entry order."""
        torch = self.torch
        out = torch.zeros(self.n_seg, dtype=torch.float64, device=self.device)
        no = self.n_order
        if no:
            vad = self.is_vad_o
            # a volume-at-dose goal reports the hot fraction, not the order statistic
            hot = self._seg_sum((dv[:self.n_order_vox] >= self.vad_x.index_select(0, self.seg_o)).double(),
                                self.seg_o, no)
            out[:no] = torch.where(vad, 100.0 * hot / self.n_t[:no], q)
        if self.n_order_vox < dv.numel():
            out[no:] = self._seg_sum(dv[self.n_order_vox:], self.seg_m, self.n_seg)[no:] / self.n_t[no:]
            if self.any_none:
                none = self.is_none[no:]
                x = self.vad_x[no:]
                hot = self._seg_sum((dv[self.n_order_vox:] >= x.index_select(0, self.seg_m - no)).double(),
                                    self.seg_m - no, self.n_seg - no)
                out[no:] = torch.where(none, 100.0 * hot / self.n_t[no:], out[no:])
        return out.index_select(0, self.inv_perm_t)

    def achieved(self, d) -> list[float]:
        """Each entry's achieved value (Gy, or % for volume-at-dose), one transfer to the host."""
        dv = d.detach().index_select(0, self.rows).double()
        q = self._quantiles(dv)[0] if self.n_order else None
        return self._achieved_tensor(dv, q).cpu().tolist()

    def achieved_last(self):
        """``achieved`` at the dose of the last ``penalties`` call, as a tensor on the device
        (its order statistics are reused: no second selection, no transfer)."""
        cache = self._cache
        return self._achieved_tensor(cache["dv"], cache.get("q"))
