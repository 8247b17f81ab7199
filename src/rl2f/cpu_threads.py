"""The number of CPU threads torch computes with (``model.cpu_threads``): 1 makes a run's numbers
independent of the machine's core count.

torch splits a matrix product or a reduction across its intra-op threads, and the split decides
the order in which floats are added. By default it uses every core it may run on, so the same
command trained a different tiny model, with evaluation numbers apart by several points, on two
cores and under ``taskset -c 0``. A fixed count is not enough by itself: two threads on one core
and on two cores still trained different models here. One thread splits nothing, so a run
repeats to the last digit on any machine with the same CPU kernels, loaded or not.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def fix_cpu_threads(threads: int) -> None:
    """Make torch use ``threads`` intra-op threads; 0 leaves torch's default (every core)."""
    if threads <= 0:
        return
    import torch

    if torch.get_num_threads() != threads:
        log.info("torch: %d CPU threads (model.cpu_threads)", threads)
        torch.set_num_threads(threads)
