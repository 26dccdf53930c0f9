"""Deep-learning dose prediction: CAD-UNet (dense + channel-attention 3D U-Net).

Modules: :mod:`.sites` (per-site structure tables and name synonyms), :mod:`.blocks`
and :mod:`.unet` (the network), :mod:`.preprocess` (patient -> model inputs and back),
:mod:`.cache` (compact training cache), :mod:`.train`, :mod:`.predict`,
:mod:`.model_io` (checkpoint files) and :mod:`.scores` (OpenKBP dose and DVH scores).
Importing this package pulls in no torch; the network modules do.
"""
