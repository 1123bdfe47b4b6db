"""The plan as a terminal table with its verdict (``spa-recipe plan``; ``--json`` is :meth:`RunPlan.to_json`)."""

from __future__ import annotations

from spa_recipes.planning import memory as m
from spa_recipes.planning.plan import CPU_PEAK_TFLOPS, RunPlan


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def render(plan: RunPlan) -> str:
    """The plan as a table and the verdict, for a terminal."""
    hw = plan.hardware
    unit = "MiB" if hw.cpu else "GB"
    scale = m.MIB if hw.cpu else m.GB
    lines = [
        f"plan of {plan.recipe} on {hw.describe()}",
        f"model: {plan.model.describe()}",
        f"time at {hw.utilisation:.0%} of {hw.peak_tflops if not hw.cpu else CPU_PEAK_TFLOPS:g} TFLOP/s a device; "
        "lengths at the recipe's limits (upper bounds)",
        "",
    ]
    header = ["stage", unit, "fits", "largest term", "terms", "time"]
    rows = []
    for s in plan.stages:
        dominant = s.dominant
        terms = ", ".join(f"{t.name} {t.bytes / scale:.{0 if hw.cpu else 1}f}" for t in s.terms[1:] if t.bytes > 0)
        rows.append(
            [
                s.name,
                f"{s.bytes / scale:.{0 if hw.cpu else 1}f}",
                "yes" if s.fits else "NO",
                dominant.name if dominant else "",
                terms or "-",
                _duration(s.seconds),
            ]
        )
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    lines.append("")
    baselines = {(t.name, round(t.bytes / scale, 1), t.how) for t in (s.terms[0] for s in plan.stages)}
    for name, size, how in sorted(baselines, key=lambda b: b[1]):
        lines.append(f"every stage also holds: {name} {size:.{0 if hw.cpu else 1}f} {unit} ({how})")
    total = plan.seconds
    if hw.cpu:
        lines.append(f"estimated time: {_duration(total)}")
    else:
        hours = plan.gpu_hours
        lines.append(
            f"estimated time: {_duration(total)} on {hw.processes} GPUs = "
            f"{'?' if hours is None else f'{hours:.1f}'} GPU-hours"
        )
    for s in plan.stages:
        for note in s.notes:
            lines.append(f"note: {s.name}: {note}")
    lines += [f"note: {n}" for n in plan.notes]
    if plan.fits:
        lines.append(f"fits: every stage fits; launch: {plan.launch}")
    else:
        failing = [s.name for s in plan.stages if not s.fits]
        lines.append(
            f"fits here: {len(plan.stages) - len(failing)} of {len(plan.stages)} stages; not: {', '.join(failing)}"
        )
        shown: list[str] = []
        for s in plan.stages:
            if not s.fits:
                lines.append(f"does NOT fit: {s.advice[0]}")
                if s.advice[1:] != shown:  # the same changes as the stage before: said once
                    lines += [f"  would fit: {a}" for a in s.advice[1:]]
                    shown = s.advice[1:]
    return "\n".join(lines)
