"""Fault tests record what they measured when RLSYS_FAULT_RESULTS names a JSONL file:
`python bench/faults.py` runs this suite with it set and renders docs/results/faults.md."""
from __future__ import annotations

import json
import os

import pytest


@pytest.fixture
def fault_record():
    """record(fault=..., outcome=..., recovery_s=..., lost=...): one row of the faults table."""
    def record(**row) -> None:
        path = os.environ.get("RLSYS_FAULT_RESULTS")
        if path:
            with open(path, "a") as fh:
                fh.write(json.dumps(row) + "\n")
    return record
