"""How a 3D patient array is cut and laid out on screen, from ``Grid.axes``.

Radiological display convention, whatever the array order (DICOM ``(+z, +y, +x)``,
OpenKBP ``(+y, +x, -z)`` or any other):

- axial: patient's right on the screen's left (screen column increases toward +x, patient
  left), anterior at the top (screen row increases toward +y, posterior);
- coronal: patient's right on the screen's left, superior at the top (row toward -z);
- sagittal: anterior on the screen's left (column toward +y), superior at the top.

Patient axes are DICOM LPS (+x left, +y posterior, +z superior). The grid says which array
axis carries which patient axis and in which direction; :class:`SliceMapping` turns that
into the axis choice, transpose and flips, so no view code ever special-cases an order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# view -> (slice patient axis, (row patient axis, row direction), (column axis, direction))
VIEW_LAYOUT = {
    "axial": ("z", ("y", +1), ("x", +1)),
    "coronal": ("y", ("z", -1), ("x", +1)),
    "sagittal": ("x", ("z", -1), ("y", +1)),
}
VIEWS = tuple(VIEW_LAYOUT)

# Letters at the screen edges: (left, right, top, bottom).
EDGE_LABELS = {
    "axial": ("R", "L", "A", "P"),
    "coronal": ("R", "L", "S", "I"),
    "sagittal": ("A", "P", "S", "I"),
}


@dataclass(frozen=True)
class SliceMapping:
    """Array <-> screen mapping of one view of one grid.

    Attributes
    ----------
    view : str
        ``axial``, ``coronal`` or ``sagittal``.
    slice_axis, row_axis, col_axis : int
        The array axes that run through the slices, down the screen and across it.
    row_flip, col_flip : bool
        Whether the array index runs against the screen direction on that axis.
    n_rows, n_cols, n_slices : int
        Image size and number of slices.
    row_mm, col_mm : float
        Pixel height and width in mm (the display aspect ratio comes from these).
    slice_sign : int
        +1 when increasing array index along the slice axis moves toward the patient's
        positive direction (+x left, +y posterior, +z superior), else -1.
    """

    view: str
    slice_axis: int
    row_axis: int
    col_axis: int
    row_flip: bool
    col_flip: bool
    n_rows: int
    n_cols: int
    n_slices: int
    row_mm: float
    col_mm: float
    slice_sign: int

    @classmethod
    def for_grid(cls, grid, view: str) -> "SliceMapping":
        if view not in VIEW_LAYOUT:
            raise ValueError(f"unknown view '{view}' (have {', '.join(VIEWS)})")
        slice_p, (row_p, row_dir), (col_p, col_dir) = VIEW_LAYOUT[view]
        letters = [a[1] for a in grid.axes]
        signs = [1 if a[0] == "+" else -1 for a in grid.axes]
        s, r, c = letters.index(slice_p), letters.index(row_p), letters.index(col_p)
        return cls(view=view, slice_axis=s, row_axis=r, col_axis=c,
                   row_flip=signs[r] != row_dir, col_flip=signs[c] != col_dir,
                   n_rows=grid.shape[r], n_cols=grid.shape[c], n_slices=grid.shape[s],
                   row_mm=float(grid.spacing_mm[r]), col_mm=float(grid.spacing_mm[c]),
                   slice_sign=signs[s])

    def extract(self, volume: np.ndarray, slice_index: int) -> np.ndarray:
        """The (n_rows, n_cols) screen-ordered image of ``volume`` at ``slice_index``.

        Returns a view where possible (no copy); callers that need contiguous memory
        (QImage) copy once.
        """
        index = [slice(None)] * 3
        index[self.slice_axis] = int(slice_index)
        plane = volume[tuple(index)]  # basic indexing: a view, no copy (np.take copies)
        # After removing the slice axis the remaining axes keep their relative order.
        if self.row_axis > self.col_axis:
            plane = plane.T
        if self.row_flip:
            plane = plane[::-1, :]
        if self.col_flip:
            plane = plane[:, ::-1]
        return plane

    def to_screen(self, index) -> tuple[float, float, float]:
        """Array index (3,) -> (row, col, slice) in this view's screen pixel grid."""
        i = np.asarray(index, dtype=float)
        row = i[self.row_axis]
        col = i[self.col_axis]
        if self.row_flip:
            row = self.n_rows - 1 - row
        if self.col_flip:
            col = self.n_cols - 1 - col
        return float(row), float(col), float(i[self.slice_axis])

    def to_index(self, row: float, col: float, slice_index: float) -> np.ndarray:
        """Screen (row, col) on slice ``slice_index`` -> array index (3,) float."""
        out = np.zeros(3)
        out[self.row_axis] = self.n_rows - 1 - row if self.row_flip else row
        out[self.col_axis] = self.n_cols - 1 - col if self.col_flip else col
        out[self.slice_axis] = slice_index
        return out
