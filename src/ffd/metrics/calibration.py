"""Calibration: temperature scaling (Guo et al. 2017), expected calibration error, Brier score.

Temperature scaling divides the logits by one scalar T > 0 fitted on held-out data
to minimise the negative log-likelihood: rankings (AUROC, AP, EER) are unchanged,
probabilities stop being overconfident. It is a one-parameter convex fit, written
here in a few lines of torch (LBFGS on log T) rather than taken from a package:
torchmetrics measures calibration but fits nothing, and the maintained fitting
libraries bring dependencies for what is one scalar.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import binary_calibration_error

ECE_BINS = 15  # the usual choice since Guo et al.
TEMPERATURE_RANGE = (0.05, 1e4)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T > 0 minimising the NLL of ``softmax(logits / T)`` on (logits (N, C), labels (N,))."""
    logits, labels = logits.double(), labels.long()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    # Separable data drives T to 0 and signal-free data to infinity: both ends are kept finite.
    return float(log_t.detach().exp().clamp(*TEMPERATURE_RANGE))


def ece(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Expected calibration error of p_fake (torchmetrics, 15 equal-width bins, L1)."""
    probs = probs.float().contiguous()  # a column slice would make torchmetrics warn
    return float(binary_calibration_error(probs, labels.long(), n_bins=ECE_BINS, norm="l1"))


def brier(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean squared error of p_fake against the 0/1 label."""
    return float(((probs.double() - labels.double()) ** 2).mean())
