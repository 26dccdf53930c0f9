"""Photon dose: beams and templates, machines, the engine registry, dose-influence matrices
and forward dose. Importing this package pulls in neither torch nor scipy; the torch
engine (:mod:`core.dose.pencil_beam`) is imported when an engine is first requested."""
