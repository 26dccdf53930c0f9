"""OpenATP planning core.

No Qt, VTK, pyvista, qtawesome, ``app`` or ``widgets`` import may ever appear under
``core``; importing ``core`` itself stays cheap (no torch, no pydicom).
"""

__version__ = "0.1.0"
