"""Seeds derived from a run's seed: the one formula for every per-epoch random stream."""

from __future__ import annotations

import numpy as np

# Independent random streams drawn from the same (seed, epoch).
GLOBAL, ORDER, WORKERS = 0, 1, 2


def epoch_seed(seed: int, epoch: int, stream: int, rank: int = 0) -> int:
    """A 32-bit seed for one stream of one epoch (and one DDP rank) of a run.

    Drawing every epoch's randomness from ``(seed, epoch)`` alone, not from how many
    epochs this process has run, is what lets a resumed run continue exactly as an
    uninterrupted one. numpy's ``SeedSequence`` mixes the numbers, so nearby seeds
    and epochs give unrelated streams.
    """
    return int(np.random.SeedSequence([int(seed), int(epoch), int(stream), int(rank)]).generate_state(1)[0])
