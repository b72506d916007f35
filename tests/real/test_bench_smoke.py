"""A one-repetition smoke of the benchmark (python -m bench): it runs and writes well-formed results.

Only the shape of the output is checked, never a timing: timings depend on the host and its load.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SUMMARY_KEYS = {"n", "min", "median", "p95"}


@pytest.mark.timeout(300)
def test_a_one_repetition_benchmark_writes_json_and_markdown_with_the_expected_keys(tmp_path: Path) -> None:
    """Floor, cold path (each with both kernels) and a 64 MiB disk figure, once each, produce the
    JSON and Markdown the report promises."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--reps", "1", "--only", "floor,coldpath,disk", "--sizes", "64",
         "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=280, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]  # 1 would mean the run left guests, overlays or keys

    document = json.loads((tmp_path / "bench.json").read_text())
    assert {"started_at", "finished_at", "args", "environment", "headline", "targets", "sections",
            "leftovers", "virsh_list_all_after"} <= document.keys()
    assert {"cpu_count", "domain_type", "kernel", "qemu", "libvirt", "load_avg_start",
            "load_avg_end"} <= document["environment"].keys()
    assert document["leftovers"] == {}
    assert set(document["sections"]) == {"floor", "coldpath", "disk"}
    expected_metrics = {"floor": "total", "coldpath": "to_finished", "disk": "overlay.64MiB"}
    for name, metric in expected_metrics.items():
        section = document["sections"][name]
        assert section["failures"] == 0, section["errors"]
        assert len(section["samples"][metric]) == 1
        assert set(section["summary"][metric]) == SUMMARY_KEYS
    # The comparison kernel (Debian's, by default) ran in the same run, with qemu's CPU time per boot.
    for prefix in ("", "kernel-debian."):
        assert len(document["sections"]["floor"]["samples"][f"{prefix}qemu_cpu_s"]) == 1
        assert len(document["sections"]["coldpath"]["samples"][f"{prefix}to_running"]) == 1
    assert set(document["headline"]["kernels"]) == {"fast", "debian"}
    assert {"overhead_s", "overhead_ratio"} <= document["headline"].keys()
    assert {t["name"] for t in document["targets"]} >= {"executor overhead over the floor", "executor RSS",
                                                       "cold LAUNCH -> TASK_RUNNING", "qemu CPU per cold boot"}

    markdown = (tmp_path / "bench.md").read_text()
    for heading in ("## Environment", "## Headline", "## Targets", "## All figures"):
        assert heading in markdown
    assert "| floor | total |" in markdown
