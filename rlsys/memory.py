"""Peak memory of the calling process (host RSS; GPU allocator peak when CUDA is in use)."""
from __future__ import annotations

import resource
import sys

from rlsys.protocol import PeakMemory


def peak_memory_mb() -> PeakMemory:
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    torch = sys.modules.get("torch")
    gpu_mb = None
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        gpu_mb = torch.cuda.max_memory_allocated() / 2**20
    return PeakMemory(host_mb=rss_kb / 1024.0, gpu_mb=gpu_mb)
