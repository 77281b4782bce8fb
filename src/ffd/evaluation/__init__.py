"""Evaluation: scores with intervals, breakdowns, the robustness sweep, report.html, Grad-CAM explanations."""
