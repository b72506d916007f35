"""Output files: the JSON with every sample, the Markdown table, the PNG chart, and RESULTS.md."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from .common import Section
from .stats import median_or_none, summarize
from .targets import Target

BENCH_DIR = Path(__file__).resolve().parent


def section_json(section: Section) -> dict[str, Any]:
    return {
        "samples": section.samples,
        "units": section.units,
        "summary": {metric: summarize(values) for metric, values in section.samples.items()},
        "failures": section.failures,
        "errors": section.errors,
        "extra": section.extra,
    }


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def _fmt(value: Any, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "s":
        return f"{value:.3f}"
    return f"{value:.1f}"


def markdown(document: dict[str, Any], targets: list[Target], chart_name: str) -> str:
    env = document["environment"]
    head = document["headline"]
    lines = [
        "# vm-isolation benchmark results",
        "",
        f"Run {document['started_at']} → {document['finished_at']} (`{document['command']}`), "
        f"{document['args']['reps']} repetitions per figure unless a section says otherwise.",
        "",
        "## Environment",
        "",
        f"- {env['cpu_count']} CPUs ({env['cpu_model']}), {env['mem_total_mib']} MiB RAM, "
        f"domain type **{env['domain_type']}**, kernel {env['kernel']}",
        f"- {env['qemu']}; {env['libvirt']}; Python {env['python']}; vm-isolation {env['vm_isolation']}",
        f"- image {env['image']}, network `{env['network']}`, guests of 1 vCPU / 192 MiB",
        f"- load average (1/5/15 min) at start {env['load_avg_start']}, at end {env['load_avg_end']}. "
        "Other engineers may have been running the real-VM test suite on this host at the same time; "
        "that load slows guests (all figures are wall-clock) and is not subtracted.",
        "",
        "## Headline",
        "",
        f"- floor (library boot → `true` → teardown), median: **{_fmt(head.get('floor_total_median_s'), 's')} s**",
        f"- executor cold path LAUNCH → TASK_FINISHED, median: **{_fmt(head.get('cold_finished_median_s'), 's')} s**",
        f"- overhead: **{_fmt(head.get('overhead_s'), 's')} s**, ratio **{head.get('overhead_ratio', '—')}**; "
        f"to TASK_RUNNING vs the floor's command start: {_fmt(head.get('running_overhead_s'), 's')} s",
        *_kernel_lines(head.get("kernels", {})),
        "",
        "## Targets",
        "",
        "| target | goal | measured | verdict |",
        "|---|---|---|---|",
    ]
    verdict = {True: "met", False: "**MISSED**", None: "not measured"}
    lines += [f"| {t.name} | {t.target} | {t.measured} | {verdict[t.met]} |" for t in targets]
    lines += ["", "Where a figure comes from (read a miss by these):", ""]
    lines += [f"- {t.name}: {'**missed** — ' if t.met is False else ''}{t.note}" for t in targets if t.note]
    lines += ["", "## All figures", "", "| section | metric | unit | n | min | median | p95 |",
              "|---|---|---|---|---|---|---|"]
    for name, section in document["sections"].items():
        for metric, summary in section["summary"].items():
            unit = section["units"].get(metric, "s")
            lines.append(f"| {name} | {metric} | {unit} | {summary['n']} | {_fmt(summary['min'], unit)} | "
                         f"{_fmt(summary['median'], unit)} | {_fmt(summary['p95'], unit)} |")
    failures = [(n, e) for n, s in document["sections"].items() for e in s["errors"]]
    lines += ["", "## Failures", ""]
    lines += [f"- {n}: {e}" for n, e in failures] or ["none"]
    lines += ["", "## Left behind", "", f"`{json.dumps(document['leftovers'])}` (our domains/overlays/keys created "
              "during the run and still present after it; `{}` means nothing)", "",
              f"![chart]({chart_name})", ""]
    return "\n".join(lines)


def _kernel_lines(kernels: dict[str, dict[str, Any]]) -> list[str]:
    """One headline line per guest kernel booted in this run (interleaved, same conditions)."""
    return [f"- {kind} kernel, medians: floor create → command started "
            f"**{_fmt(k['floor_command_started_median_s'], 's')} s**, cold LAUNCH → TASK_RUNNING "
            f"**{_fmt(k['cold_running_median_s'], 's')} s**, qemu CPU per boot "
            f"**{_fmt(k['qemu_cpu_s_per_boot_median'], 's')} CPU s**" for kind, k in kernels.items()]


def chart(path: Path, sections: dict[str, Section]) -> bool:
    """Write the PNG; False (and no file) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
    _phases(axes[0], sections)
    _concurrency(axes[1], sections)
    _disk(axes[2], sections)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _phases(ax: Any, sections: dict[str, Section]) -> None:
    phases = ["overlay", "define", "start", "lease", "ssh", "upload", "run"]
    rows = {"floor": sections.get("floor"), "executor": sections.get("coldpath")}
    bottom_of: dict[str, float] = {}
    for phase in phases:
        heights = [(median_or_none(s.samples.get(f"phase.{phase}", [])) or 0.0) if s else 0.0 for s in rows.values()]
        bottoms = [bottom_of.get(k, 0.0) for k in rows]
        ax.bar(list(rows), heights, bottom=bottoms, label=phase)
        for k, h in zip(rows, heights, strict=True):
            bottom_of[k] = bottom_of.get(k, 0.0) + (h or 0.0)
    totals = [median_or_none(rows["floor"].samples.get("total", [])) if rows["floor"] else None,
              median_or_none(rows["executor"].samples.get("to_finished", [])) if rows["executor"] else None]
    ax.scatter(list(rows), [t or 0.0 for t in totals], marker="_", s=2000, color="black", label="end to end")
    ax.set_ylabel("seconds (median)")
    ax.set_title("floor vs executor cold path")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def _concurrency(ax: Any, sections: dict[str, Section]) -> None:
    conc = sections.get("concurrency")
    if not conc:
        ax.set_title("concurrency (not measured)")
        return
    for mode in conc.extra.get("modes", []):
        for what in ("all_running", "all_finished"):
            xs, ys = [], []
            for n in conc.extra.get("counts", []):
                value = median_or_none(conc.samples.get(f"{mode}.n{n}.{what}", []))
                if value is not None:
                    xs.append(n)
                    ys.append(value)
            ax.plot(xs, ys, marker="o", label=f"{mode}: {what.replace('_', ' ')}")
    ax.set_xlabel("tasks launched at once")
    ax.set_ylabel("seconds from launch")
    ax.set_title("concurrency")
    ax.legend(fontsize=7)


def _disk(ax: Any, sections: dict[str, Section]) -> None:
    disk = sections.get("disk")
    if not disk:
        ax.set_title("disk (not measured)")
        return
    sizes = disk.extra.get("sizes_mib", [])
    for kind in ("overlay", "copy"):
        ys = [median_or_none(disk.samples.get(f"{kind}.{s}MiB", [])) for s in sizes]
        ax.plot(sizes, [y if y is not None else float("nan") for y in ys], marker="o", label=kind)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("base image size (MiB)")
    ax.set_ylabel("seconds (median)")
    ax.set_title("overlay vs full copy")
    ax.legend(fontsize=7)


def publish(json_path: Path, md_text: str, png_path: Path) -> None:
    """Copy the latest results to the committed bench/RESULTS.md and bench/RESULTS.png."""
    if png_path.exists():
        shutil.copyfile(png_path, BENCH_DIR / "RESULTS.png")
    text = md_text.replace(f"]({png_path.name})", "](RESULTS.png)")
    text += f"\nRaw samples: `{json_path.relative_to(BENCH_DIR.parent)}` (git-ignored; rerun `make bench`).\n"
    (BENCH_DIR / "RESULTS.md").write_text(text, encoding="utf-8")
