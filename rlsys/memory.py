"""Peak memory of the calling process (host RSS; GPU allocator peak when CUDA is in use)."""
from __future__ import annotations

import resource
import sys


def peak_memory_mb() -> dict[str, float]:
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"host_mb": rss_kb / 1024.0}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        out["gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out
