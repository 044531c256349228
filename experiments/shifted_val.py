"""Validation images under acquisition shifts: the shifts live in `edge_pneumo.training.shifts`
(train uses them to choose a robust threshold); experiments import them from here as before."""

from edge_pneumo.training.shifts import SHIFTS, shifted_sets  # noqa: F401
