"""Analysis: evaluation, Grad-CAM explanations and localization, the metadata baseline."""
