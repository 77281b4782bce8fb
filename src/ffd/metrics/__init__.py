"""Metrics, figures and reports: scores with intervals, calibration, breakdowns, tables."""
