"""Radiological display orientation derived from Grid.axes, for both array orders."""

import numpy as np
import pytest

from core.geometry import DICOM_AXES, OPENKBP_AXES, Grid
from widgets.slice_geometry import SliceMapping
from tests.widgets.conftest import make_phantom

ORDERS = [DICOM_AXES, OPENKBP_AXES, ("-x", "+z", "-y")]


def _screen_coord_image(axes, view, which):
    """Screen image (at the central slice) of one patient coordinate (0=x, 1=y, 2=z)."""
    shape = {"+z": 10, "-z": 10, "+y": 12, "-y": 12, "+x": 14, "-x": 14}
    spacing = {"x": 1.5, "y": 2.0, "z": 3.0}
    grid = Grid(tuple(shape[a] for a in axes), tuple(spacing[a[1]] for a in axes), (5.0, -7.0, 11.0), axes)
    _, _, _, _, xyz = make_phantom(grid.shape, grid.spacing_mm, axes)
    # make_phantom uses origin 0: rebuild the coordinates on this grid
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in grid.shape], indexing="ij"), -1).reshape(-1, 3)
    xyz = grid.index_to_patient(idx).reshape(*grid.shape, 3)
    m = SliceMapping.for_grid(grid, view)
    return m, m.extract(xyz[..., which], m.n_slices // 2)


@pytest.mark.parametrize("axes", ORDERS)
def test_axial_patient_right_on_screen_left_anterior_on_top(axes):
    m, x_img = _screen_coord_image(axes, "axial", 0)
    # LPS: +x is patient left, so x must increase from screen left to right, constant down columns
    assert np.all(np.diff(x_img, axis=1) > 0) and np.all(np.diff(x_img, axis=0) == 0)
    _, y_img = _screen_coord_image(axes, "axial", 1)
    # +y is posterior: increases downward (anterior at the top)
    assert np.all(np.diff(y_img, axis=0) > 0) and np.all(np.diff(y_img, axis=1) == 0)


@pytest.mark.parametrize("axes", ORDERS)
def test_coronal_and_sagittal_superior_on_top(axes):
    for view, col_axis in (("coronal", 0), ("sagittal", 1)):
        _, z_img = _screen_coord_image(axes, view, 2)
        assert np.all(np.diff(z_img, axis=0) < 0), view  # z (superior) decreases downward
        _, c_img = _screen_coord_image(axes, view, col_axis)
        # coronal: patient left on screen right; sagittal: posterior on screen right
        assert np.all(np.diff(c_img, axis=1) > 0), view


@pytest.mark.parametrize("axes", ORDERS)
def test_pixel_size_and_index_round_trip(axes):
    spacing = {"x": 1.5, "y": 2.0, "z": 3.0}
    grid = Grid((9, 10, 11), tuple(spacing[a[1]] for a in axes), (0, 0, 0), axes)
    for view, (rp, cp) in {"axial": ("y", "x"), "coronal": ("z", "x"), "sagittal": ("z", "y")}.items():
        m = SliceMapping.for_grid(grid, view)
        assert (m.row_mm, m.col_mm) == (spacing[rp], spacing[cp])
        idx = np.array([3.0, 7.0, 5.0])
        r, c, s = m.to_screen(idx)
        np.testing.assert_allclose(m.to_index(r, c, s), idx)
        # the screen pixel shows exactly that voxel
        vol = np.arange(grid.size).reshape(grid.shape)
        assert m.extract(vol, int(s))[int(r), int(c)] == vol[tuple(idx.astype(int))]


def test_same_anatomy_same_picture_for_both_orders():
    """An OpenKBP-ordered copy of a DICOM-ordered volume must display identically."""
    g1, hu1, _, _, _ = make_phantom((12, 16, 20), (2.5, 2.0, 2.0), DICOM_AXES)
    # (z, y, x) -> OpenKBP (y, x, -z): transpose and flip z
    hu2 = np.ascontiguousarray(np.transpose(hu1, (1, 2, 0))[:, :, ::-1])
    g2 = Grid(hu2.shape, (2.0, 2.0, 2.5), (0, 0, 0), OPENKBP_AXES)
    for view in ("axial", "coronal", "sagittal"):
        m1, m2 = SliceMapping.for_grid(g1, view), SliceMapping.for_grid(g2, view)
        s1 = m1.n_slices // 2
        s2 = s1 if m1.slice_sign == m2.slice_sign else m1.n_slices - 1 - s1
        np.testing.assert_array_equal(m1.extract(hu1, s1), m2.extract(hu2, s2))


def test_demo_case_left_parotid_on_screen_right(demo_case):
    """Real anatomy (OpenKBP pt_201): left parotid appears right of the right parotid in
    axial and coronal views, and the mandible lies anterior (above) of the cord."""
    from core.io.loader import load_patient

    p = load_patient(str(demo_case))
    ax = SliceMapping.for_grid(p.grid, "axial")
    def screen_centroid(name, m):
        idx = np.argwhere(p.structures[name].mask).mean(axis=0)
        return m.to_screen(idx)
    assert screen_centroid("LeftParotid", ax)[1] > screen_centroid("RightParotid", ax)[1] + 10
    assert screen_centroid("Mandible", ax)[0] < screen_centroid("SpinalCord", ax)[0]
    sag = SliceMapping.for_grid(p.grid, "sagittal")
    assert screen_centroid("Brainstem", sag)[0] < screen_centroid("Esophagus", sag)[0]  # superior on top
    assert screen_centroid("Mandible", sag)[1] < screen_centroid("SpinalCord", sag)[1]  # anterior on left
