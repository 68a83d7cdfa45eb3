"""GC tuning: in a child process, since the collector's settings are process-wide."""

from __future__ import annotations

import subprocess
import sys


def test_tune_gc_freezes_start_up_objects_and_raises_the_young_threshold() -> None:
    code = (
        "import gc; from relaycore.runtime import GC_YOUNG_THRESHOLD, tune_gc; "
        "before = gc.get_threshold(); tune_gc(); after = gc.get_threshold(); "
        "print(after[0] == GC_YOUNG_THRESHOLD, after[1:] == before[1:], gc.get_freeze_count() > 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert result.stdout.split() == ["True", "True", "True"]
