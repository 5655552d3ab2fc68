"""Calibration choices above the search and fidelity stages: the output-measured ``auto``."""
