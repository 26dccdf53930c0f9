"""Rebuild ``generic6mv.npz`` from pyRadPlan 0.5.0's ``photons_Generic.mat`` (BSD-3, DKFZ).

Usage (pyRadPlan is *not* a dependency; download the wheel and unzip it):
    pip download --no-deps pyradplan==0.5.0 -d /tmp/prp && unzip /tmp/prp/*.whl -d /tmp/prp/whl
    python resources/machines/build_generic6mv.py /tmp/prp/whl/pyRadPlan/data/machines/photons_Generic.mat

The .mat file (machine version 2, "kernels normalised to 1/mm^2") holds SVD pencil-beam
kernels for a generic 6 MV linac on a 0.5 mm radial grid for SSD 500..1000 mm in 1 mm steps.
We keep every 10th SSD (kernels change smoothly with SSD) to keep the file small.
"""

import sys

import numpy as np
import scipy.io as sio


def main(path: str) -> None:
    m = sio.loadmat(path, squeeze_me=True, struct_as_record=False)["machine"]
    d = m.data
    ssd = np.array([k.SSD for k in d.kernel], dtype=float)
    keep = np.isclose(ssd % 10, 0)
    kern = np.stack([[k.kernel1, k.kernel2, k.kernel3] for k in d.kernel])[keep]
    np.savez_compressed(
        "generic6mv.npz",
        kernel_ssd_mm=ssd[keep].astype(np.float32),
        kernel_pos_mm=np.asarray(d.kernelPos, dtype=np.float32),
        kernels=kern.astype(np.float32),
        betas_per_mm=np.asarray(d.betas, dtype=np.float64),
        mu_per_mm=np.float64(d.m),
        primary_fluence=np.asarray(d.primaryFluence, dtype=np.float64),
        penumbra_fwhm_mm=np.float64(d.penumbraFWHMatIso),
        sad_mm=np.float64(m.meta.SAD),
        scd_mm=np.float64(m.meta.SCD),
        machine_version=np.int64(m.version),
    )


if __name__ == "__main__":
    main(sys.argv[1])
