"""SVD pencil-beam photon dose engine in torch (runs unchanged on CPU and CUDA).

Model (Bortfeld, Schlegel & Rhein, Med. Phys. 20:311, 1993; data: :mod:`core.dose.machine`)
---------------------------------------------------------------------------------------
Dose per MU at a voxel from a fluence ``F(u, v)`` (MU, isocentre plane) is

    D = g * (SAD / r_src)^2 * sum_c D_c(z; mu(theta)) * [F (x) G_pen (x) K_c^(rho)](u, v)

* ``z`` radiological depth: a ray trace through the relative electron density (CT through
  the HU table, zero outside the body), done once per beam on a diverging "fan" grid
  aligned with the beam and read back at every voxel by trilinear interpolation;
* ``(u, v)`` the voxel's projection onto the isocentre plane (field coordinates);
* ``r_src`` the distance from the source (inverse-square law);
* ``mu(theta)`` the off-axis-softened attenuation coefficient;
* ``K_0^(rho)`` = ``rho^2 K_0(rho r)``: the primary (electron-transport dominated) kernel
  component scaled laterally with the local relative density ``rho`` (density averaged over
  ~1 cm inside the body), tabulated at :data:`core.dose.machine.RHO_LEVELS` and
  interpolated linearly in ``rho``; the photon-scatter components are not scaled;
* ``g`` = ``machine.gy_per_mu`` (100 MU, 10 x 10 cm, SSD 100 cm -> 1 Gy at d_max).

Dose-influence matrix
---------------------
Beamlets (``beamlet_mm`` squares on a lattice through the isocentre) are exact within a
core radius (``core_radius_mm``); the long scatter tail (about a quarter of a beamlet's
dose lies beyond 15 mm) is represented without bias by stratified importance sampling:
per voxel and beam, ``tail_samples`` beamlets are drawn from equal-mass strata of the tail
(probability proportional to the kernel) and stored with weight value/probability. Core
values below ``rel_threshold`` of a beamlet's maximum are kept by Russian roulette (kept
with probability value/threshold, stored as the threshold), also unbiased. Tail offsets
are drawn with Walker's alias method. The random numbers come from a CPU generator seeded
per beam, so CPU and CUDA runs draw the same samples.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from core.dose.engine import FluenceMap, make_dose_grid, register_engine
from core.dose.hlut import hu_to_red
from core.dose.machine import RHO_LEVELS, RHO_NN_LEVELS, PhotonMachine, get_machine
from core.errors import DoseEngineError, GeometryError, InputError
from core.progress import check_cancel, report



# ---------------------------------------------------------------------------------------
# patient preparation
# ---------------------------------------------------------------------------------------
@dataclass
class _Prepared:
    device: torch.device
    ct_grid: object
    dose_grid: object
    density: torch.Tensor        # (a0, a1, a2) float32 relative electron density, 0 outside body
    idx_affine: torch.Tensor     # (3, 3): index = (p - origin_lps) @ idx_affine.T  (array axis order)
    origin_lps: torch.Tensor     # (3,) LPS of CT voxel [0,0,0]
    voxel_index: np.ndarray      # (n,) int64 flat indices into dose_grid.shape
    voxel_lps: torch.Tensor      # (n, 3) float64 LPS mm of the voxels
    rho_local: torch.Tensor      # (n,) float32 local density (for lateral kernel scaling)
    body_lps_min: np.ndarray
    body_lps_max: np.ndarray
    warnings: list


def _prepare(patient, dose_grid, device, hlut=None, local_density_mm: float = 10.0) -> _Prepared:
    from scipy import ndimage

    if patient.ct is None:
        raise DoseEngineError("dose calculation needs the patient's CT (this patient has no images)")
    n_warn = len(patient.warnings)
    body = np.asarray(patient.external_mask(), dtype=bool)
    warnings = list(patient.warnings[n_warn:])
    if not body.any():
        raise GeometryError("the external contour (BODY) is empty")
    ct_grid = patient.ct.grid
    red = hu_to_red(patient.ct.hu, hlut)
    red[~body] = 0.0  # densities outside the body (couch, air, artefacts) are ignored

    # Local density: body-normalised box average, so surface voxels are not diluted by air.
    size = np.maximum(1, np.round(local_density_mm / np.asarray(ct_grid.spacing_mm)).astype(int))
    num = ndimage.uniform_filter(red, size=size, mode="constant")
    den = ndimage.uniform_filter(body.astype(np.float32), size=size, mode="constant")
    rho_loc_ct = np.where(den > 1e-3, num / np.maximum(den, 1e-3), 1.0).astype(np.float32)

    # Voxels of the dose grid inside the body (nearest CT voxel).
    if dose_grid.same_as(ct_grid):
        vox_body = body
        rho_on_dose = rho_loc_ct
    else:
        from core.geometry import resample_to_grid

        vox_body = resample_to_grid(body.astype(np.uint8), ct_grid, dose_grid, order=0) > 0
        rho_on_dose = resample_to_grid(rho_loc_ct, ct_grid, dose_grid, order=0, fill=1.0)
    voxel_index = np.flatnonzero(vox_body.ravel()).astype(np.int64)
    if voxel_index.size == 0:
        raise GeometryError("the dose grid holds no voxel inside the body")
    ijk = np.stack(np.unravel_index(voxel_index, dose_grid.shape), axis=1)
    lps = dose_grid.index_to_patient(ijk)
    bidx = np.argwhere(body)
    blo = ct_grid.index_to_patient(bidx.min(0))[0]
    bhi = ct_grid.index_to_patient(bidx.max(0))[0]
    lo, hi = np.minimum(blo, bhi), np.maximum(blo, bhi)

    # index = (p - origin) @ A.T with A[k, patient_axis(k)] = sign_k / spacing_k
    A = ct_grid.direction / np.asarray(ct_grid.spacing_mm)[:, None]
    origin = ct_grid.index_to_patient(np.zeros(3))[0]
    return _Prepared(
        device=device, ct_grid=ct_grid, dose_grid=dose_grid,
        density=torch.as_tensor(red, device=device),
        idx_affine=torch.as_tensor(A, dtype=torch.float64, device=device),
        origin_lps=torch.as_tensor(origin, dtype=torch.float64, device=device),
        voxel_index=voxel_index,
        voxel_lps=torch.as_tensor(lps, dtype=torch.float64, device=device),
        rho_local=torch.as_tensor(rho_on_dose.ravel()[voxel_index], dtype=torch.float32, device=device),
        body_lps_min=lo, body_lps_max=hi, warnings=warnings,
    )


# ---------------------------------------------------------------------------------------
# per-beam geometry and radiological depth
# ---------------------------------------------------------------------------------------
@dataclass
class _BeamGeo:
    u: torch.Tensor          # (n,) field coordinate at isocentre plane, mm
    v: torch.Tensor
    rd: torch.Tensor         # (n,) radiological depth, mm water-equivalent
    isl: torch.Tensor        # (n,) (SAD / distance from source)^2
    theta_deg: torch.Tensor  # (n,) off-axis angle
    ssd_mm: float


def _uv_from_xz(X, Z, coll_deg):
    c, s = math.cos(math.radians(coll_deg)), math.sin(math.radians(coll_deg))
    return X * c + Z * s, -X * s + Z * c


def _beam_geometry(prep: _Prepared, beam, machine: PhotonMachine, max_fan_points: float = 24e6) -> _BeamGeo:
    dev = prep.device
    sad = float(beam.sad_mm)
    R64 = torch.as_tensor(beam.rotation, dtype=torch.float64, device=dev)
    iso64 = torch.as_tensor(beam.isocenter_mm, dtype=torch.float64, device=dev)
    # float32 from here: coordinates relative to the isocentre need no more precision.
    q = ((prep.voxel_lps - iso64).float() @ R64.float())     # BEV (x, depth axis, z)
    t = sad + q[:, 1]                                       # axial distance from the source
    if float(t.min()) <= 1.0:
        raise GeometryError(f"beam at gantry {beam.gantry_deg:g}: part of the body lies behind the source "
                            f"(SAD {sad:g} mm is too short for this patient)")
    inv_t = sad / t
    X = q[:, 0] * inv_t
    Z = q[:, 2] * inv_t
    isl = sad * sad / (q[:, 0] ** 2 + t ** 2 + q[:, 2] ** 2)
    theta = torch.rad2deg(torch.atan(torch.sqrt(X ** 2 + Z ** 2) / sad))

    # ---- fan grid over the body's projection -----------------------------------------
    sp = float(min(prep.ct_grid.spacing_mm))
    h_lat = min(max(sp, 1.0), 3.0)
    h_t = min(max(0.6 * sp, 0.5), 2.0)
    # The whole body box projected, so rays start before the skin everywhere.
    corners = np.array([[x, y, z] for x in (prep.body_lps_min[0], prep.body_lps_max[0])
                        for y in (prep.body_lps_min[1], prep.body_lps_max[1])
                        for z in (prep.body_lps_min[2], prep.body_lps_max[2])])
    cq = (corners - np.asarray(beam.isocenter_mm)) @ beam.rotation
    t0 = max(float((sad + cq[:, 1]).min()) - 2 * sp, 1.0)
    t1 = float(t.max()) + 2 * h_t
    Xlo, Xhi = float(X.min()) - 2 * h_lat, float(X.max()) + 2 * h_lat
    Zlo, Zhi = float(Z.min()) - 2 * h_lat, float(Z.max()) + 2 * h_lat
    n_pts = (Xhi - Xlo) / h_lat * (Zhi - Zlo) / h_lat * (t1 - t0) / h_t
    if n_pts > max_fan_points:
        f = (n_pts / max_fan_points) ** (1.0 / 3.0)
        h_lat *= f
        h_t *= f
    nX = int(math.ceil((Xhi - Xlo) / h_lat)) + 1
    nZ = int(math.ceil((Zhi - Zlo) / h_lat)) + 1
    nt = int(math.ceil((t1 - t0) / h_t)) + 1
    Xg = Xlo + h_lat * torch.arange(nX, dtype=torch.float64, device=dev)
    Zg = Zlo + h_lat * torch.arange(nZ, dtype=torch.float64, device=dev)
    tg = t0 + h_t * torch.arange(nt, dtype=torch.float64, device=dev)

    # Fan point (X, Z, t) = src + (t / SAD) (X e_x + Z e_z + SAD e_y); in grid_sample's
    # normalised CT coordinates that is a + t * b(X, Z): one multiply-add per point.
    shape = torch.tensor(prep.density.shape, dtype=torch.float64, device=dev)
    to_norm = prep.idx_affine.T * (2.0 / torch.clamp(shape - 1.0, min=1.0))[None, :]   # (3 lps, 3 axes)
    src = iso64 - sad * R64[:, 1]
    a = ((src - prep.origin_lps) @ to_norm - 1.0)[[2, 1, 0]].float()                  # (W, H, D) order
    lat = Xg[None, :, None] * R64[:, 0] + Zg[:, None, None] * R64[:, 2] + sad * R64[:, 1]
    bvec = ((lat / sad) @ to_norm)[..., [2, 1, 0]].float()                             # (nZ, nX, 3)
    dens = prep.density[None, None]
    rho_fan = torch.empty((nt, nZ, nX), dtype=torch.float32, device=dev)
    step = max(1, int(4e6 // (nX * nZ)))
    tg32 = tg.float()
    for k0 in range(0, nt, step):
        tt = tg32[k0:k0 + step]
        grid = a + tt[:, None, None, None] * bvec[None]
        rho_fan[k0:k0 + step] = torch.nn.functional.grid_sample(
            dens, grid[None], mode="bilinear", padding_mode="zeros", align_corners=True)[0, 0]
    ds = (h_t * torch.sqrt(Xg[None, :] ** 2 + Zg[:, None] ** 2 + sad * sad) / sad).float()  # (nZ, nX)
    rd_fan = (torch.cumsum(rho_fan, dim=0) - 0.5 * rho_fan) * ds[None]

    gx = (X - Xlo) * (2.0 / ((nX - 1) * h_lat)) - 1.0
    gz = (Z - Zlo) * (2.0 / ((nZ - 1) * h_lat)) - 1.0
    gt = (t - t0) * (2.0 / ((nt - 1) * h_t)) - 1.0
    g = torch.stack([gx, gz, gt], dim=-1).reshape(1, 1, 1, -1, 3)
    rd = torch.nn.functional.grid_sample(rd_fan[None, None], g, mode="bilinear", padding_mode="border",
                                         align_corners=True).reshape(-1)

    # SSD along the central axis (nearest fan column), else the nearest skin point.
    i0 = int(torch.argmin(torch.abs(Xg)))
    j0 = int(torch.argmin(torch.abs(Zg)))
    col = rho_fan[:, j0, i0]
    hit = torch.nonzero(col > 0.05)
    if len(hit) and abs(float(Xg[i0])) <= 2 * h_lat and abs(float(Zg[j0])) <= 2 * h_lat:
        ssd = float(tg[int(hit[0])]) - 0.5 * h_t
    else:
        ssd = float(t.min())
    u, v = _uv_from_xz(X, Z, beam.collimator_deg)
    return _BeamGeo(u=u, v=v, rd=rd, isl=isl, theta_deg=theta, ssd_mm=ssd)


def _depth_factors(machine: PhotonMachine, rd: torch.Tensor, theta_deg: torch.Tensor) -> torch.Tensor:
    """(n, 3) D_c(z; mu(theta)) = beta/(beta-mu) (exp(-mu z) - exp(-beta z)), stable for beta ~ mu."""
    mu = (machine.mu_per_mm * (1.0 + machine.softening_per_deg * theta_deg)).float()[:, None]
    b = torch.as_tensor(machine.betas_per_mm, dtype=torch.float32, device=rd.device)[None, :]
    z = torch.clamp(rd.float(), min=0.0)[:, None]
    d = b - mu
    small = torch.abs(d) < 1e-7
    dsafe = torch.where(small, torch.ones_like(d), d)
    val = b * torch.exp(-mu * z) * torch.where(small, z, -torch.expm1(-dsafe * z) / dsafe)
    return val.float()


def _rho_levels(rho: torch.Tensor):
    """Index of the level below and the linear weight of the level above, per voxel."""
    lv = torch.as_tensor(RHO_LEVELS, dtype=torch.float32, device=rho.device)
    r = torch.clamp(rho, lv[0], lv[-1])
    lo = torch.clamp(torch.searchsorted(lv, r, right=True) - 1, 0, len(RHO_LEVELS) - 2)
    w = (r - lv[lo]) / (lv[lo + 1] - lv[lo])
    return lo, w


# ---------------------------------------------------------------------------------------
# beamlet kernel tables (numpy, cached)
# ---------------------------------------------------------------------------------------
_TABLE_CACHE: dict = {}


def _beamlet_tables(machine: PhotonMachine, ssd_key: int, size_mm: tuple, radius_mm: float,
                    h_mm: float, levels, kernel_radius_mm: float | None = None) -> np.ndarray:
    """(n_levels, N, N, 3) float32: beamlet (size_mm square, penumbra-blurred) kernels on a
    centred grid of spacing ``h_mm`` reaching ``radius_mm``; component 0 per density level.

    Component 0 per level and the scatter components are cached separately, so a new
    density level costs one convolution."""
    n = int(math.ceil(radius_mm / h_mm))
    g = h_mm * np.arange(-n, n + 1)
    bu, bv = size_mm
    # Pixels straddling the square's edge get their covered fraction (keeps the area exact).
    fu = np.clip((bu / 2 - np.abs(g) + h_mm / 2) / h_mm, 0, 1)
    fv = np.clip((bv / 2 - np.abs(g) + h_mm / 2) / h_mm, 0, 1)
    fl = fu[:, None] * fv[None, :]
    base = (id(machine), ssd_key, tuple(size_mm), round(radius_mm, 3), h_mm, kernel_radius_mm)
    if len(_TABLE_CACHE) > 256:
        _TABLE_CACHE.clear()
    skey = base + ("scatter",)
    if skey not in _TABLE_CACHE:
        _TABLE_CACHE[skey] = machine.lateral_maps(fl, h_mm, ssd_key, rho_levels=(),
                                                  kernel_radius_mm=kernel_radius_mm)
    sc = _TABLE_CACHE[skey]
    out = np.empty((len(levels), len(g), len(g), 3), dtype=np.float32)
    for i, lv in enumerate(levels):
        k = base + (float(lv),)
        if k not in _TABLE_CACHE:
            _TABLE_CACHE[k] = machine.lateral_maps(fl, h_mm, ssd_key, rho_levels=(lv,),
                                                   kernel_radius_mm=kernel_radius_mm, scatter=False)[0]
        out[i, ..., 0] = _TABLE_CACHE[k]
        out[i, ..., 1] = sc[0]
        out[i, ..., 2] = sc[1]
    return out


def _alias_table(p: np.ndarray):
    """Vose's alias method for the discrete distribution ``p`` (sums to 1)."""
    n = len(p)
    q = np.asarray(p, dtype=np.float64) * n
    prob = np.ones(n)
    alias = np.arange(n, dtype=np.int64)
    small = [i for i in range(n) if q[i] < 1.0]
    large = [i for i in range(n) if q[i] >= 1.0]
    while small and large:
        s_, l_ = small.pop(), large.pop()
        prob[s_] = q[s_]
        alias[s_] = l_
        q[l_] -= 1.0 - q[s_]
        (small if q[l_] < 1.0 else large).append(l_)
    return prob, alias


# ---------------------------------------------------------------------------------------
# the engine
# ---------------------------------------------------------------------------------------
class SvdPencilBeamEngine:
    """SVD pencil-beam engine (see module docstring).

    Parameters
    ----------
    machine : str or PhotonMachine
    core_radius_mm : float
        Beamlet-voxel pairs within this lateral distance are computed exactly.
    tail_radius_mm : float
        The scatter tail is sampled out to this distance (kernel data reach 180 mm).
    tail_samples : int
        Tail samples (strata) per voxel and beam.
    rel_threshold : float
        Relative (to a beamlet's maximum) value below which entries are Russian-rouletted.
    fluence_spacing_mm : float
        Pixel size of fluence maps in forward dose.
    chunk_pairs : int
        Beamlet-voxel pairs processed at once (bounds memory).
    hlut : (n, 2) array, optional
        HU -> relative electron density table.
    """

    key = "svd_pencil_beam"

    def __init__(self, machine="openatp6mv", core_radius_mm: float = 15.0, tail_radius_mm: float = 150.0,
                 tail_samples: int = 6, rel_threshold: float = 0.005, fluence_spacing_mm: float = 1.0,
                 chunk_pairs: int = 3_000_000, hlut=None):
        self.machine = get_machine(machine) if isinstance(machine, str) else machine
        if core_radius_mm <= 0 or tail_radius_mm < core_radius_mm:
            raise InputError("dose engine: need 0 < core radius <= tail radius")
        self.core_radius_mm = float(core_radius_mm)
        self.tail_radius_mm = float(min(tail_radius_mm, self.machine.kernel_pos_mm[-1]))
        self.tail_samples = int(tail_samples)
        self.rel_threshold = float(rel_threshold)
        self.fluence_spacing_mm = float(fluence_spacing_mm)
        self.chunk_pairs = int(chunk_pairs)
        self.hlut = hlut

    # -- helpers -------------------------------------------------------------------------
    def prepare(self, patient, dose_grid, device) -> _Prepared:
        return _prepare(patient, dose_grid, device, self.hlut)

    def beam_geometry(self, prep: _Prepared, beam) -> _BeamGeo:
        return _beam_geometry(prep, beam, self.machine)

    # -- dose-influence matrix -----------------------------------------------------------
    def influence(self, patient, beams, *, beamlet_mm=5.0, dose_grid=None, target_names=None,
                  margin_mm=5.0, device=None, beamlets=None, progress=None, cancel=None):
        """Dose-influence matrix (see :func:`core.dose.influence.compute_influence`)."""
        from core.dose.influence import DoseInfluence, beamlets_for_targets

        t_start = time.perf_counter()
        dev = torch.device("cpu") if device is None else torch.device(device)
        m = self.machine
        b_u, b_v = (float(beamlet_mm), float(beamlet_mm)) if np.isscalar(beamlet_mm) else tuple(map(float, beamlet_mm))
        h = b_u / max(1, round(b_u / 0.5))
        if abs(b_v / h - round(b_v / h)) > 1e-6:
            raise InputError(f"beamlet size {b_u:g} x {b_v:g} mm: both sides must be multiples of {h:g} mm")
        dgrid = make_dose_grid(patient.grid, dose_grid) if not hasattr(dose_grid, "shape") else dose_grid
        report(progress, 0, 1, "preparing the CT")
        prep = self.prepare(patient, dgrid, dev)
        check_cancel(cancel)
        if beamlets is None:
            beamlets = beamlets_for_targets(patient, beams, (b_u, b_v), target_names, margin_mm)
        beam_of, pos = beamlets
        beam_of = np.asarray(beam_of, dtype=np.int64)
        pos = np.asarray(pos, dtype=np.float64)
        nb_total = len(beam_of)
        if nb_total == 0:
            raise GeometryError("no beamlet covers the target: check the target contours and the beams")
        n_vox = len(prep.voxel_index)
        blocks = []
        col_offset = 0
        timings = {"geometry": 0.0, "kernel": 0.0, "assembly": 0.0}
        for ib, beam in enumerate(beams):
            check_cancel(cancel)
            cols = np.flatnonzero(beam_of == ib)
            if cols.size == 0:
                continue
            if np.any(np.diff(cols) != 1) or cols[0] != col_offset:
                raise InputError("beamlets must be grouped by beam, in beam order")
            t0 = time.perf_counter()
            geo = self.beam_geometry(prep, beam)
            timings["geometry"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            for rows, cc, vals in self._beam_block(prep, geo, beam, ib, pos[cols], (b_u, b_v), h, cancel):
                blocks.append((rows, cc + col_offset, vals))
            timings["kernel"] += time.perf_counter() - t0
            col_offset += cols.size
            report(progress, ib + 1, len(beams), f"beam {ib + 1}/{len(beams)}",
                   nnz=int(sum(len(b[0]) for b in blocks)))
        t0 = time.perf_counter()
        matrix = _assemble_csr(blocks, n_vox, nb_total, dev)
        timings["assembly"] = time.perf_counter() - t0
        del blocks
        timings["total"] = time.perf_counter() - t_start
        return DoseInfluence(
            matrix=matrix, voxel_index=prep.voxel_index, grid=dgrid,
            beamlet_beam=beam_of, beamlet_pos_mm=pos.astype(np.float64),
            beamlet_size_mm=(b_u, b_v), beams=beams, patient_grid=patient.grid,
            meta={"engine": self.key, "machine": m.name, "gy_per_mu": m.gy_per_mu,
                  "core_radius_mm": self.core_radius_mm, "tail_radius_mm": self.tail_radius_mm,
                  "tail_samples": self.tail_samples, "rel_threshold": self.rel_threshold,
                  "nnz": int(matrix._nnz()), "timings_s": timings, "device": str(dev),
                  "warnings": prep.warnings})

    def _beam_block(self, prep, geo, beam, ib, pos, size, h, cancel):
        """List of (rows int32, local cols int32, values float32) blocks of one beam; each is
        sorted by (row, col) and no row appears in two blocks."""
        dev = prep.device
        m = self.machine
        b_u, b_v = size
        bmax = max(b_u, b_v)
        # Beamlet lattice: centres at (i b_u + off_u, j b_v + off_v). The offset lets the
        # lattice line up with the MLC's leaf boundaries (centres at (j + 1/2) b_v); all
        # lattice arithmetic below runs in coordinates shifted by it.
        off_u, off_v = (float(pos[0, k] - np.round(pos[0, k] / b) * b) for k, b in ((0, b_u), (1, b_v)))
        li = np.round((pos[:, 0] - off_u) / b_u).astype(np.int64)
        lj = np.round((pos[:, 1] - off_v) / b_v).astype(np.int64)
        if (np.max(np.abs(li * b_u + off_u - pos[:, 0])) > 1e-3
                or np.max(np.abs(lj * b_v + off_v - pos[:, 1])) > 1e-3):
            raise InputError("beamlet positions of a beam must lie on one regular lattice of the beamlet size")
        geo_u = geo.u - off_u if off_u else geo.u
        geo_v = geo.v - off_v if off_v else geo.v
        if np.any(np.diff(li * (lj.max() - lj.min() + 2) + lj) <= 0):
            raise InputError("beamlets of a beam must be distinct and in raster order (u major, v minor)")
        i_min, j_min = int(li.min()), int(lj.min())
        ni, nj = int(li.max()) - i_min + 1, int(lj.max()) - j_min + 1
        # Empty padding wide enough that every (voxel cell + offset) of the tail box stays
        # inside the padded lattice, so flat indices never wrap into a neighbouring row.
        P = 2 * (int(self.tail_radius_mm // min(b_u, b_v)) + 3)
        lat = -np.ones((ni + 2 * P, nj + 2 * P), dtype=np.int64)
        lat[li - i_min + P, lj - j_min + P] = np.arange(len(pos))
        lat_flat = torch.as_tensor(lat.reshape(-1).astype(np.int32), device=dev)   # int32: faster sorts
        nj2 = nj + 2 * P
        horn = torch.as_tensor(m.horn(np.hypot(pos[:, 0], pos[:, 1])), dtype=torch.float32, device=dev)
        ssd_key = m.ssd_key(geo.ssd_mm)

        # ---- tables: core at 0.25 mm with density levels (nearest), tail at 0.5 mm -------
        hc = h / max(1, round(h / 0.25))
        suc, svc = int(round(b_u / hc)), int(round(b_v / hc))
        rc_tab = self.core_radius_mm + 1.5 * bmax + 2 * hc
        # only the density levels this beam's voxels need
        lvl_v = torch.clamp(torch.round((prep.rho_local - RHO_NN_LEVELS[0]) / 0.05), 0, len(RHO_NN_LEVELS) - 1)
        i1 = RHO_NN_LEVELS.index(1.0)
        lvl_lo, lvl_hi = min(int(lvl_v.min()), i1), max(int(lvl_v.max()), i1)
        core_np = np.stack([_beamlet_tables(m, ssd_key, (b_u, b_v), rc_tab, hc, (RHO_NN_LEVELS[lv],),
                                            kernel_radius_mm=rc_tab + bmax)[0]
                            for lv in range(lvl_lo, lvl_hi + 1)])
        core_flat = torch.as_tensor(core_np.reshape(-1, 3), device=dev)
        Nc = core_np.shape[1]
        cc_ = Nc // 2
        # The tail (beyond the core radius) is smooth: a 1 mm table (nearest pixel) is enough.
        h = b_u / max(1, round(b_u / 1.0))
        if abs(b_v / h - round(b_v / h)) > 1e-6:
            h = hc
        su, sv = int(round(b_u / h)), int(round(b_v / h))
        rt_tab = self.tail_radius_mm + bmax + 2 * h
        tail_np = _beamlet_tables(m, ssd_key, (b_u, b_v), rt_tab, h, (1.0,))[0]
        tail_flat = torch.as_tensor(tail_np.reshape(-1, 3), device=dev)
        Nt = tail_np.shape[0]
        ct_ = Nt // 2

        # Core offsets: lattice offsets whose beamlet centre is within reach; raster order.
        kr_u, kr_v = int(self.core_radius_mm // b_u) + 2, int(self.core_radius_mm // b_v) + 2
        oi, oj = np.meshgrid(np.arange(-kr_u, kr_u + 1), np.arange(-kr_v, kr_v + 1), indexing="ij")
        keep = np.hypot(oi * b_u, oj * b_v) <= self.core_radius_mm + 0.5 * math.hypot(b_u, b_v)
        oi, oj = oi[keep], oj[keep]
        off_lat = torch.as_tensor(oi * nj2 + oj, device=dev)
        off_tab = torch.as_tensor(oi * suc * Nc + oj * svc, device=dev)
        core_set = set(zip(oi.tolist(), oj.tolist()))

        # Tail strata: lattice offsets outside the core out to the tail radius, sampled with
        # probability proportional to the beamlet kernel at 10 cm depth.
        kt_u, kt_v = int(self.tail_radius_mm // b_u), int(self.tail_radius_mm // b_v)
        ti, tj = np.meshgrid(np.arange(-kt_u, kt_u + 1), np.arange(-kt_v, kt_v + 1), indexing="ij")
        ti, tj = ti.ravel(), tj.ravel()
        rr = np.hypot(ti * b_u, tj * b_v)
        sel = (rr <= self.tail_radius_mm) & np.array([(x, y) not in core_set for x, y in zip(ti, tj)], dtype=bool)
        ti, tj, rr = ti[sel], tj[sel], rr[sel]
        dref = m.depth_factors_np(np.array([100.0]))[:, 0]
        pk = tail_np[ct_ + ti * su, ct_ + tj * sv] @ dref
        ok = pk > 0
        ti, tj, rr, pk = ti[ok], tj[ok], rr[ok], pk[ok]
        strata = []
        n_str = min(self.tail_samples, len(pk))
        if n_str > 0:
            o = np.lexsort((np.arctan2(tj, ti), rr))        # rings, then angle: compact strata
            ti, tj, pk = ti[o], tj[o], pk[o]
            cum = np.cumsum(pk)
            edges = np.searchsorted(cum, cum[-1] * np.arange(1, n_str) / n_str)
            bounds = np.concatenate([[0], edges, [len(pk)]])
            for s_ in range(n_str):
                a0, a1 = int(bounds[s_]), int(bounds[s_ + 1])
                if a1 <= a0:
                    continue
                p_ = pk[a0:a1]
                mass = p_.sum()
                prob, alias = _alias_table(p_ / mass)
                strata.append(((torch.as_tensor(prob, dtype=torch.float32, device=dev),
                                torch.as_tensor(alias, device=dev)),
                               torch.as_tensor(ti[a0:a1] * nj2 + tj[a0:a1], device=dev),
                               torch.as_tensor(ti[a0:a1] * su * Nt + tj[a0:a1] * sv, device=dev),
                               torch.as_tensor((mass / p_).astype(np.float32), device=dev)))

        # Voxels this beam reaches (tail) and the subset near its beamlets (core).
        def box(reach):
            return ((geo_u >= (i_min - 0.5) * b_u - reach) & (geo_u <= (i_min + ni - 0.5) * b_u + reach)
                    & (geo_v >= (j_min - 0.5) * b_v - reach) & (geo_v <= (j_min + nj - 0.5) * b_v + reach))

        vox = torch.nonzero(box(self.tail_radius_mm + bmax)).reshape(-1)
        blocks = []
        if vox.numel() == 0:
            return blocks
        in_core = box(self.core_radius_mm + 1.5 * bmax)[vox]
        Dall = _depth_factors(m, geo.rd[vox], geo.theta_deg[vox]) * (m.gy_per_mu * geo.isl[vox])[:, None]
        lvl_all = torch.clamp(torch.round((prep.rho_local[vox] - RHO_NN_LEVELS[0]) / 0.05), 0,
                              len(RHO_NN_LEVELS) - 1).long() - lvl_lo
        thr = float(self.rel_threshold * m.gy_per_mu * float(
            (m.depth_factors_np(np.array([15.0]))[:, 0] * core_np[i1 - lvl_lo, cc_, cc_]).sum()))
        gen = torch.Generator(device="cpu")
        gen.manual_seed(1_000_003 * (ib + 1))

        def rand(n):
            return torch.rand(n, generator=gen).to(dev)

        big = torch.iinfo(torch.int32).max
        n_lat = lat_flat.numel()
        n_per = len(oi) + len(strata)
        chunk = max(256, self.chunk_pairs // max(1, n_per))
        for c0 in range(0, vox.numel(), chunk):
            check_cancel(cancel)
            sl = slice(c0, c0 + chunk)
            vs = vox[sl]
            n = vs.numel()
            u, v = geo_u[vs], geo_v[vs]
            D = Dall[sl]
            ci = torch.round(u / b_u)
            cj = torch.round(v / b_v)
            lat_base = (ci.long() - i_min + P) * nj2 + (cj.long() - j_min + P)

            # ---- tail samples for every voxel: (n, S) stratified importance sampling -----
            S = len(strata)
            if S:
                au = torch.round((u - ci * b_u) / h).long()
                av = torch.round((v - cj * b_v) / h).long()
                tb = (ct_ + au) * Nt + (ct_ + av)
                tcols, tvals = [], []
                for (prob, alias), s_lat, s_tab, inv_p in strata:
                    # Walker/Vose alias sampling: exact, O(1) per draw
                    nk = len(prob)
                    ib_ = torch.clamp((rand(n) * nk).long(), max=nk - 1)
                    k = torch.where(rand(n) < prob.index_select(0, ib_), ib_, alias.index_select(0, ib_))
                    colt = torch.take(lat_flat, (lat_base + s_lat.index_select(0, k)).clamp(0, n_lat - 1))
                    t = tail_flat.index_select(0, tb - s_tab.index_select(0, k))
                    val = (t * D).sum(1) * (inv_p.index_select(0, k) * horn.index_select(0, colt.clamp(min=0)))
                    ok = (colt >= 0) & (val > 0)
                    tcols.append(torch.where(ok, colt, big))
                    tvals.append(val)
                tcols = torch.stack(tcols, 1)
                tvals = torch.stack(tvals, 1)
            else:
                tcols = torch.empty((n, 0), dtype=torch.int32, device=dev)
                tvals = torch.empty((n, 0), dtype=torch.float32, device=dev)

            # ---- core pairs (exact; nearest 0.25 mm table pixel and density level) -------
            incore = in_core[sl]
            cr = torch.nonzero(incore).reshape(-1)
            if cr.numel():
                au = torch.round((u[cr] - ci[cr] * b_u) / hc).long()
                av = torch.round((v[cr] - cj[cr] * b_v) / hc).long()
                tbase = lvl_all[sl][cr] * (Nc * Nc) + (cc_ + au) * Nc + (cc_ + av)
                col = torch.take(lat_flat, (lat_base[cr][:, None] + off_lat[None, :]).clamp(0, n_lat - 1))
                t = core_flat.index_select(0, (tbase[:, None] - off_tab[None, :]).reshape(-1)).view(len(cr), -1, 3)
                val = torch.bmm(t, D.index_select(0, cr).unsqueeze(2)).squeeze(2)
                val = val * horn.index_select(0, col.clamp(min=0).reshape(-1)).view(col.shape)
                valid = col >= 0
                small = val < thr
                if bool((small & valid).any()):
                    # Russian roulette below the threshold: kept with probability val / thr,
                    # stored as thr (unbiased); random numbers only for the small ones.
                    idx_small = torch.nonzero((small & valid).reshape(-1)).reshape(-1)
                    keep_small = rand(idx_small.numel()) * thr < val.reshape(-1).index_select(0, idx_small)
                    valid_f = valid.reshape(-1).clone()
                    valid_f[idx_small] = keep_small
                    valid = valid_f.view(valid.shape)
                    val = torch.where(small, torch.full_like(val, thr), val)
                ccols = torch.where(valid, col, big)
                blocks.append(_sorted_rows(vs[cr], torch.cat([ccols, tcols[cr]], 1),
                                           torch.cat([val, tvals[cr]], 1), big))
            nc = torch.nonzero(~incore).reshape(-1)
            if nc.numel() and S:
                blocks.append(_sorted_rows(vs[nc], tcols[nc], tvals[nc], big))
        return blocks

    # -- forward dose --------------------------------------------------------------------
    def forward(self, patient, beams, fluences, *, dose_grid=None, device=None, progress=None, cancel=None,
                prep=None):
        """Dose (Gy, float32 array on the dose grid) of per-beam :class:`FluenceMap` s."""
        dev = torch.device("cpu") if device is None else torch.device(device)
        m = self.machine
        dgrid = make_dose_grid(patient.grid, dose_grid) if not hasattr(dose_grid, "shape") else dose_grid
        if prep is None:
            prep = self.prepare(patient, dgrid, dev)
        dose = torch.zeros(len(prep.voxel_index), dtype=torch.float32, device=dev)
        lo_all, wl_all = _rho_levels(prep.rho_local)
        for ib, (beam, fl) in enumerate(zip(beams, fluences)):
            check_cancel(cancel)
            if fl is None or not np.any(fl.values_mu > 0):
                continue
            geo = self.beam_geometry(prep, beam)
            # Pad the map by the kernel reach so the convolution sees the whole tail.
            pad = int(math.ceil((m.kernel_pos_mm[-1] + 5 * m.sigma_mm) / fl.spacing_mm))
            vals = np.pad(fl.values_mu, pad)
            u0, v0 = fl.u0_mm - pad * fl.spacing_mm, fl.v0_mm - pad * fl.spacing_mm
            if m.use_horns and not fl.horn_applied:
                gu = u0 + fl.spacing_mm * np.arange(vals.shape[0])
                gv = v0 + fl.spacing_mm * np.arange(vals.shape[1])
                # horns are a function of the radius in the isocentre plane (rotation-free)
                vals = vals * m.horn(np.hypot(gu[:, None], gv[None, :]))
            lvl_lo = int(lo_all.min())
            lvl_hi = int(lo_all.max()) + 1
            levels = RHO_LEVELS[lvl_lo:lvl_hi + 1]
            maps = m.lateral_maps(vals, fl.spacing_mm, m.ssd_key(geo.ssd_mm), rho_levels=levels)
            maps_t = torch.as_tensor(maps, device=dev)
            nu, nv = vals.shape
            gx = 2.0 * (geo.v - v0) / ((nv - 1) * fl.spacing_mm) - 1.0
            gy = 2.0 * (geo.u - u0) / ((nu - 1) * fl.spacing_mm) - 1.0
            g = torch.stack([gx, gy], -1).reshape(1, 1, -1, 2).float()
            samp = torch.nn.functional.grid_sample(maps_t[None], g, mode="bilinear", padding_mode="zeros",
                                                   align_corners=True)[0, :, 0, :]          # (n_maps, n)
            nl = len(levels)
            lo_rel = (lo_all - lvl_lo)
            c0 = torch.gather(samp[:nl], 0, lo_rel[None]).reshape(-1) * (1 - wl_all) + \
                torch.gather(samp[:nl], 0, torch.clamp(lo_rel + 1, max=nl - 1)[None]).reshape(-1) * wl_all
            D = _depth_factors(m, geo.rd, geo.theta_deg)
            dose += (D[:, 0] * c0 + (D[:, 1:] * samp[nl:].T).sum(1)) * geo.isl * m.gy_per_mu
            report(progress, ib + 1, len(beams), f"beam {ib + 1}/{len(beams)}")
        out = np.zeros(dgrid.size, dtype=np.float32)
        out[prep.voxel_index] = dose.cpu().numpy()
        return out.reshape(dgrid.shape), prep


def _sorted_rows(rows, cols, vals, big):
    """Flatten dense (n, k) per-row candidates (invalid cols = ``big``) into (row, col, val)
    sorted by row then column: a batched sort of short rows instead of one global sort."""
    if cols.shape[1] > 1:
        cols, order = torch.sort(cols, dim=1)
        vals = torch.gather(vals, 1, order)
    r, k = torch.nonzero(cols != big, as_tuple=True)
    return rows.index_select(0, r).to(torch.int32), cols[r, k].to(torch.int32), vals[r, k].float()


def _assemble_csr(blocks, n_rows: int, n_cols: int, device):
    """Merge (row, col, value) blocks into one CSR matrix without a global sort.

    Each block is sorted by (row, col); a row's entries may be spread over several blocks,
    whose columns then increase from block to block (blocks come beam by beam). Work is
    O(nnz): per block, run-length counts of its rows."""
    nnz = int(sum(len(b[0]) for b in blocks))
    idx_dtype = torch.int32 if nnz < 2**31 - 1 else torch.int64
    counts = torch.zeros(n_rows, dtype=torch.int64, device=device)
    runs = []
    for rows, _, _ in blocks:
        if len(rows) == 0:
            runs.append(None)
            continue
        uniq, cnt = torch.unique_consecutive(rows.long(), return_counts=True)
        counts.index_add_(0, uniq, cnt)
        runs.append((uniq, cnt))
    crow = torch.zeros(n_rows + 1, dtype=torch.int64, device=device)
    crow[1:] = torch.cumsum(counts, 0)
    start = crow[:-1].clone()
    col_out = torch.empty(nnz, dtype=idx_dtype, device=device)
    val_out = torch.empty(nnz, dtype=torch.float32, device=device)
    for (rows, cols, vals), run in zip(blocks, runs):
        if run is None:
            continue
        uniq, cnt = run
        first = torch.cumsum(cnt, 0) - cnt                    # block position of each run
        base = start.index_select(0, uniq) - first            # output position minus block position
        p = torch.repeat_interleave(base, cnt) + torch.arange(len(rows), device=device)
        col_out[p] = cols.to(idx_dtype)
        val_out[p] = vals
        start.index_add_(0, uniq, cnt)
    from core.dose.csr import csr_tensor

    return csr_tensor(crow.to(idx_dtype), col_out, val_out, (n_rows, n_cols))


register_engine(SvdPencilBeamEngine.key, SvdPencilBeamEngine)
