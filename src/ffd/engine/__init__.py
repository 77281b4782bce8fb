"""Running a model: the backbone runtimes (``runtimes/``), the feature cache, the scorers and the one
function every caller scores files with (``scoring.score_files``), Grad-CAM."""
