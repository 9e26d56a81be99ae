"""The fault suite as a table: runs `pytest tests/faults` (real Ray, vLLM and DeepSpeed; each fault
is a real kill -9, SIGTERM, hanging function or closed port) with RLSYS_FAULT_RESULTS set, so every
test records the fault, the outcome, the seconds it took to recover and what was lost, then writes
docs/results/faults.md.

    python bench/faults.py                    # about 10 minutes on a 2-core machine
    python bench/faults.py --from FILE        # render what a run with RLSYS_FAULT_RESULTS=FILE recorded
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "results" / "faults.md"


def main(argv: list[str]) -> int:
    """`--from FILE`: render a results file another run wrote (e.g. the full suite run with
    RLSYS_FAULT_RESULTS=FILE) instead of running the fault suite here."""
    if argv[:1] == ["--from"]:
        return render(Path(argv[1]), "the fault tests of a full `pytest tests` run", passed=True)
    results = Path(tempfile.mkdtemp()) / "faults.jsonl"
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "pytest", "tests/faults", "-q", "-p", "no:cacheprovider"],
                          cwd=ROOT, env={**os.environ, "RLSYS_FAULT_RESULTS": str(results)})
    render(results, f"`pytest tests/faults`, {time.time() - t0:.0f} s in all", passed=proc.returncode == 0)
    return proc.returncode


def render(results: Path, what: str, passed: bool) -> int:
    rows = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    lines = ["# Faults: what happens, how long recovery takes, what is lost", "",
             f"`python bench/faults.py` on {time.strftime('%Y-%m-%d')}: {what} "
             f"({'passed' if passed else 'FAILED'}). "
             "Every fault is real: `kill -9` of the actor's process at the named moment, SIGTERM / SIGINT to "
             "the real `python -m launch.train`, a real hanging or raising function, a real closed port.", "",
             "| fault | outcome | seconds to recover | lost |", "|---|---|---|---|"]
    for r in rows:
        seconds = "" if r.get("recovery_s") is None else f"{r['recovery_s']:.1f}"
        lines.append(f"| {r['fault']} | {r['outcome']} | {seconds} | {r['lost']} |")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    lines += ["", "Seconds to recover: the restart (process start, model load, weights from the learner) "
              "plus re-issuing the work, as logged in `faults/recovery_s/<role>`; for SIGTERM, signal to exit "
              "(the rest of the step, the checkpoint, the actors stopped); for kill -9 of the driver, until the "
              "last process it started had exited (Ray's agents wait 60 s to report to the dead GCS)."]
    OUT.write_text("\n".join(lines) + "\n")
    print(OUT.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
