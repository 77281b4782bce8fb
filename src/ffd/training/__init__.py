"""Training runs: fit, calibrate and test; their callbacks, resume, cross-validation, sweeps, SLURM, DDP."""
