"""Plots (matplotlib) and the self-contained `report.html` of a run."""
