"""6 MV photon machine data for the SVD pencil-beam engine.

Kernel data
-----------
The lateral kernels are those of pyRadPlan 0.5.0's ``photons_Generic`` machine (BSD
3-Clause, Copyright (c) 2024 DKFZ; file ``pyRadPlan/data/machines/photons_Generic.mat``,
machine version 2), converted by ``resources/machines/build_generic6mv.py``. They follow
the singular-value-decomposed pencil-beam model of Bortfeld, Schlegel & Rhein, "Decomposition
of pencil beam kernels for fast dose calculations in three-dimensional treatment planning",
Med. Phys. 20(2):311-318 (1993): the dose of a pencil beam is

    d(r, z) = sum_c  D_c(z) K_c(r),   D_c(z) = beta_c / (beta_c - mu) (exp(-mu z) - exp(-beta_c z))

with ``z`` the radiological depth and ``r`` the lateral distance projected to the
isocentre plane. ``K_0`` carries a delta-like primary spike at r = 0 (one 0.5 mm pixel).

Two machines are shipped (``resources/machines/<name>.json``):

* ``generic6mv`` - pyRadPlan's data unchanged (used to reproduce pyRadPlan doses).
* ``openatp6mv`` (default) - the same kernel shapes with the depth parameters (mu, beta_0,
  beta_1) and the weight of the two scatter components refitted so that the 10 x 10 cm
  field at SSD 100 cm reproduces BJR Supplement 25 (1996) 6 MV central-axis data
  (d_max 1.5 cm, PDD(10) ~ 67 %, PDD(20) ~ 39 %) and typical 6 MV total scatter factors at
  10 cm depth (5 x 5: ~0.915, 20 x 20: ~1.07). pyRadPlan's generic machine gives PDD(10)
  65.4 %, below the 66-68.5 % that 6 MV linacs measure; the fit lives in the JSON file.

Off-axis softening: the effective attenuation coefficient grows with the off-axis angle,
``mu(theta) = mu (1 + softening_per_deg * theta_deg)``; 0.0045/deg reproduces the typical
flattening-filter 6 MV observation that horns of ~5 % at d_max fall to ~2 % at 20 cm depth
at 15 cm off axis (e.g. Tailor, Tello & Hanson, Med. Phys. 25:62, 1998).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np

from core.errors import DoseEngineError, InputError

MACHINE_DIR = Path(__file__).resolve().parents[2] / "resources" / "machines"
DEFAULT_MACHINE = "openatp6mv"

#: Relative electron density levels at which the primary kernel component is tabulated
#: with lateral density scaling (values between levels are interpolated linearly).
RHO_LEVELS = (0.1, 0.2, 0.35, 0.5, 0.7, 0.85, 1.0, 1.2, 1.5, 2.0)
#: Finer levels for the dose-influence tables, which use the nearest level (no interpolation).
RHO_NN_LEVELS = tuple(round(0.1 + 0.05 * i, 2) for i in range(39))


@dataclass(frozen=True, eq=False)
class PhotonMachine:
    """An SVD pencil-beam photon machine.

    Parameters
    ----------
    name : str
    energy_mv : float
    sad_mm : float
        Source-axis distance.
    mu_per_mm : float
        Primary attenuation coefficient ``mu`` of the depth model.
    betas_per_mm : (3,) float
        Build-up coefficients of the three kernel components.
    kernel_pos_mm : (n_r,) float
        Radial positions of the kernels (isocentre plane), 0.5 mm steps from 0.
    kernel_ssd_mm : (n_ssd,) float
        SSDs the kernels are tabulated for.
    kernels : (n_ssd, 3, n_r) float
        Kernel components, 1/mm^2 (the r = 0 sample is a spike over one (0.5 mm)^2 pixel).
    scatter_scale : (3,) float
        Weight of each kernel component (1 for pyRadPlan's data).
    primary_fluence : (n, 2) float
        (radius at isocentre mm, relative primary fluence) - the flattening-filter horns.
    penumbra_fwhm_mm : float
        Source-size penumbra (Gaussian FWHM at the isocentre).
    softening_per_deg : float
        Off-axis softening coefficient (see module docstring).
    max_field_mm : float
        Largest field the collimator opens (side at the isocentre).
    use_horns : bool
        Whether beamlets and fields are weighted by ``primary_fluence``.
    citation : str
    """

    name: str
    energy_mv: float
    sad_mm: float
    mu_per_mm: float
    betas_per_mm: np.ndarray
    kernel_pos_mm: np.ndarray
    kernel_ssd_mm: np.ndarray
    kernels: np.ndarray
    scatter_scale: np.ndarray
    primary_fluence: np.ndarray
    penumbra_fwhm_mm: float = 5.0
    softening_per_deg: float = 0.0
    max_field_mm: float = 400.0
    use_horns: bool = True
    citation: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.sad_mm <= 0 or self.mu_per_mm <= 0:
            raise InputError(f"machine '{self.name}': SAD and mu must be positive")
        if self.kernels.ndim != 3 or self.kernels.shape[1] != len(self.betas_per_mm):
            raise InputError(f"machine '{self.name}': kernel components do not match the betas")
        if self.kernels.shape[0] != len(self.kernel_ssd_mm) or self.kernels.shape[2] != len(self.kernel_pos_mm):
            raise InputError(f"machine '{self.name}': kernel table shape does not match its axes")
        if np.any(np.isclose(self.betas_per_mm, self.mu_per_mm)):
            raise InputError(f"machine '{self.name}': a beta equals mu (depth model undefined)")

    # -- construction ------------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | Path) -> "PhotonMachine":
        """Load a machine JSON (see ``resources/machines``)."""
        path = Path(path)
        try:
            spec = json.loads(path.read_text())
            data = np.load(path.parent / spec["kernel_file"])
        except (OSError, ValueError, KeyError) as exc:
            raise DoseEngineError(f"cannot read the machine file: {exc}", path) from None
        n_comp = data["kernels"].shape[1]
        return cls(
            name=spec.get("name", path.stem),
            energy_mv=float(spec.get("energy_mv", 6.0)),
            sad_mm=float(spec.get("sad_mm", data["sad_mm"])),
            mu_per_mm=float(spec.get("mu_per_mm", data["mu_per_mm"])),
            betas_per_mm=np.asarray(spec.get("betas_per_mm", data["betas_per_mm"]), dtype=float),
            kernel_pos_mm=np.asarray(data["kernel_pos_mm"], dtype=float),
            kernel_ssd_mm=np.asarray(data["kernel_ssd_mm"], dtype=float),
            kernels=np.asarray(data["kernels"], dtype=float),
            scatter_scale=np.asarray(spec.get("scatter_scale", [1.0] * n_comp), dtype=float),
            primary_fluence=np.asarray(data["primary_fluence"], dtype=float),
            penumbra_fwhm_mm=float(spec.get("penumbra_fwhm_mm", data["penumbra_fwhm_mm"])),
            softening_per_deg=float(spec.get("softening_per_deg", 0.0)),
            max_field_mm=float(spec.get("max_field_mm", 400.0)),
            use_horns=bool(spec.get("use_horns", True)),
            citation=str(spec.get("citation", "")),
            meta=spec,
        )

    # -- kernel data -------------------------------------------------------------------
    @property
    def n_components(self) -> int:
        return int(self.kernels.shape[1])

    @property
    def sigma_mm(self) -> float:
        return self.penumbra_fwhm_mm / np.sqrt(8.0 * np.log(2.0))

    #: SSD granularity of kernel selection. The kernels change with SSD by < 0.2 % in the
    #: primary component and ~1 % in the scatter components per 50 mm, while each distinct
    #: SSD costs a table build (~0.3 s), so beams snap to the nearest 50 mm.
    ssd_step_mm: float = 50.0

    def ssd_key(self, ssd_mm: float) -> int:
        """Index of the tabulated SSD nearest to ``ssd_mm`` rounded to ``ssd_step_mm``."""
        s = float(np.clip(ssd_mm, self.kernel_ssd_mm.min(), self.kernel_ssd_mm.max()))
        s = round(s / self.ssd_step_mm) * self.ssd_step_mm
        return int(np.argmin(np.abs(self.kernel_ssd_mm - s)))

    def radial_kernels(self, ssd_key: int) -> tuple[np.ndarray, np.ndarray]:
        """Smooth radial part (3, n_r) in 1/mm^2 and the primary spike weights (3,) (mm^0).

        The tabulated r = 0 sample is a spike over one (0.5 mm)^2 pixel; it is split into
        a smooth value (continued from r = 0.5 mm) and a point weight so that any
        convolution grid spacing reproduces the same integral.
        """
        k = self.kernels[ssd_key] * self.scatter_scale[:, None]
        smooth = k.copy()
        smooth[:, 0] = k[:, 1]
        pixel = float(self.kernel_pos_mm[1] - self.kernel_pos_mm[0]) ** 2
        spike = (k[:, 0] - k[:, 1]) * pixel
        return smooth, spike

    def horn(self, r_mm):
        """Relative primary fluence at isocentre-plane radius ``r_mm`` (numpy)."""
        if not self.use_horns:
            return np.ones_like(np.asarray(r_mm, dtype=float))
        pf = self.primary_fluence
        return np.interp(np.asarray(r_mm, dtype=float), pf[:, 0], pf[:, 1])

    def depth_factors_np(self, rd_mm: np.ndarray, mu: float | None = None) -> np.ndarray:
        """(3, n) depth functions D_c at radiological depths ``rd_mm`` (numpy reference)."""
        mu = self.mu_per_mm if mu is None else mu
        b = self.betas_per_mm[:, None]
        z = np.asarray(rd_mm, dtype=float)[None, :]
        return b / (b - mu) * (np.exp(-mu * z) - np.exp(-b * z))

    def lateral_maps(self, fluence: np.ndarray, h_mm: float, ssd_key: int,
                     rho_levels=(1.0,), kernel_radius_mm: float | None = None,
                     scatter: bool = True) -> np.ndarray:
        """Convolve a fluence map with the source penumbra and each kernel component.

        Parameters
        ----------
        fluence : (nu, nv) float ndarray on a grid of spacing ``h_mm`` at the isocentre plane
        rho_levels : relative densities for which component 0 is tabulated laterally scaled
        kernel_radius_mm : optional
            Truncate the kernels here (only when the caller needs the result no farther
            than ``fluence extent + kernel_radius_mm`` from the field, as for table cores).
        scatter : bool
            Include components 1.. (False: only component 0 at ``rho_levels``).

        Returns
        -------
        (len(rho_levels) + n_components - 1, nu, nv) float32: component 0 at each density
        level, then components 1.. (unscaled). Same grid as ``fluence``.
        """
        from scipy.signal import fftconvolve

        smooth, spike = self.radial_kernels(ssd_key)
        f = _gauss_blur(np.asarray(fluence, dtype=np.float64), self.sigma_mm, h_mm)
        rmax = float(self.kernel_pos_mm[-1])
        if kernel_radius_mm is not None:
            rmax = min(rmax, float(kernel_radius_mm))
        n = int(np.ceil(rmax / h_mm))
        g = h_mm * np.arange(-n, n + 1)
        r = np.sqrt(g[:, None] ** 2 + g[None, :] ** 2)
        out = []
        comps = [(0, lv) for lv in rho_levels]
        if scatter:
            comps += [(c, 1.0) for c in range(1, self.n_components)]
        for c, rho in comps:
            # Lateral density scaling rho^2 K(rho r) conserves the kernel integral.
            kc = rho * rho * np.interp(rho * r, self.kernel_pos_mm, smooth[c], right=0.0) * h_mm * h_mm
            out.append(fftconvolve(f, kc, mode="same") + spike[c] * f)
        return np.stack(out).astype(np.float32)

    @cached_property
    def gy_per_mu(self) -> float:
        """Absolute calibration: 100 MU, 10 x 10 cm at SSD 100 cm, give 1 Gy at d_max in water."""
        h = 1.0
        half = 50.0
        n = int(np.ceil((half + 5 * self.sigma_mm) / h)) + 2
        g = h * np.arange(-n, n + 1)
        fl = ((np.abs(g)[:, None] <= half) & (np.abs(g)[None, :] <= half)).astype(float)
        fl *= self.horn(np.sqrt(g[:, None] ** 2 + g[None, :] ** 2))
        maps = self.lateral_maps(fl, h, self.ssd_key(self.sad_mm))
        centre = maps[:, n, n].astype(float)     # component 0 (rho = 1), then 1, 2
        z = np.arange(0.0, 60.0, 0.1)
        dose = (self.depth_factors_np(z) * centre[:, None]).sum(0) * (self.sad_mm / (self.sad_mm + z)) ** 2
        return float(0.01 / dose.max())


def _gauss_blur(f: np.ndarray, sigma_mm: float, h_mm: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    if sigma_mm <= 0:
        return f
    return gaussian_filter(f, sigma_mm / h_mm, mode="constant", truncate=5.0)


def available_machines() -> list[str]:
    return sorted(p.stem for p in MACHINE_DIR.glob("*.json"))


@lru_cache(maxsize=8)
def get_machine(name: str = DEFAULT_MACHINE) -> PhotonMachine:
    """The machine registered as ``resources/machines/<name>.json``."""
    path = MACHINE_DIR / f"{name}.json"
    if not path.exists():
        raise InputError(f"unknown treatment machine '{name}' (have: {', '.join(available_machines())})")
    return PhotonMachine.from_file(path)
