"""Runs: training (one run, CV folds, the audit's controls, the benchmark), callbacks, resume, sweeps."""
