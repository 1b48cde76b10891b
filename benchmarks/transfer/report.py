"""experiment.md, experiment.json and learning_curves.png from `analysis.analyse`'s numbers."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from medgmae_plans.runtime.atomic import write_json_atomic, write_text_atomic

from evaluation.seeds import SeedComparison

from .analysis import OBJECTIVE, Arm
from .steps import DECODERS, LOW, PROBE_FRACTIONS

INIT_NAMES = {"scratch": "Scratch", "voxelmae": "voxel-MAE", "medgmae": "MedGMAE", "nnunet": "nnU-Net (PlainConvUNet)"}


def pts(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{100 * value:+.2f}"


def mean_cell(arm: Arm, which: str = "endpoint") -> str:
    mean, low, high = arm.mean(which)
    spread = f" [{100 * low:.2f}, {100 * high:.2f}]" if math.isfinite(low) else " (one seed)"
    return f"{100 * mean:.2f}{spread}"


def comparison_rows(comparisons: dict[str, SeedComparison]) -> list[str]:
    rows = ["| comparison | estimate (points) | per seed | t-interval over seeds | positive | two-level bootstrap |",
            "| --- | ---: | --- | --- | ---: | --- |"]
    for name, c in comparisons.items():
        rows.append(f"| {name} | {pts(c.estimate)} | {', '.join(pts(d) for d in c.by_seed)} | "
                    f"[{pts(c.t_low)}, {pts(c.t_high)}] | {c.positive} of {c.seeds} | "
                    f"[{pts(c.boot_low)}, {pts(c.boot_high)}] |")
    return rows


def curve_rows(result: dict, args) -> list[str]:
    arms = result["probe_arms"]
    head = "| representation | pretraining steps | " + " | ".join(
        f"probe at {100 * f:.0f} %: endpoint [t-interval]" for f in PROBE_FRACTIONS) + " | 15 organs at 10 % |"
    rows = [head, "| --- | ---: | " + " | ".join("---:" for _ in PROBE_FRACTIONS) + " | ---: |"]
    keys = [("raw", 0), ("random", 0)] + [(d, s) for d in DECODERS.values() for s in (*args.keep_steps, args.pretrain_steps)]
    for name, step in keys:
        cells = " | ".join(mean_cell(arms[name, step, f]) for f in PROBE_FRACTIONS)
        rows.append(f"| {OBJECTIVE[name]} | {step or '-'} | {cells} | {mean_cell(arms[name, step, LOW], 'all_organs')} |")
    return rows


def finetune_rows(result: dict) -> list[str]:
    rows = ["| init | fraction | per replicate (endpoint %) | endpoint [t-interval] | 15 organs |",
            "| --- | ---: | --- | ---: | ---: |"]
    for (init, fraction), arm in result["finetune_arms"].items():
        per = ", ".join(f"{100 * v:.2f}" for v in arm.endpoint.mean(axis=1))
        rows.append(f"| {INIT_NAMES[init]} | {100 * fraction:.0f} % | {per} | {mean_cell(arm)} | "
                    f"{mean_cell(arm, 'all_organs')} |")
    return rows


def quality_table(rows: list[dict]) -> list[str]:
    """Masked MSE over the visible-mean baseline's, and the gap closed towards the direct fit, mean over seeds."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["decoder"], r["step"]), []).append(r)
    out = ["| objective | step | seeds | masked MSE / visible mean | gap closed to the direct fit |",
           "| --- | ---: | ---: | ---: | ---: |"]
    for (decoder, step), group in sorted(groups.items()):
        ratio = np.mean([r["ours"] / r["baseline"] for r in group])
        gaps = [(r["baseline"] - r["ours"]) / (r["baseline"] - r["ceiling"]) for r in group
                if r["ceiling"] is not None and r["baseline"] != r["ceiling"]]
        out.append(f"| {OBJECTIVE.get(decoder, decoder)} | {step} | {len(group)} | {ratio:.3f} | "
                   + (f"{np.mean(gaps):.2f} |" if gaps else "- |"))
    return out


def markdown(result: dict, args, wall_s: float | None) -> str:
    v = result["verdicts"]
    lines = [f"# Does MedGMAE pretraining help? (`python -m benchmarks.transfer`{' --quick' if args.quick else ''})",
             "", f"**Verdict: probe — {v['probe']}; fine-tuning at 10 % — {v['fine-tuning']}.** "
             "(Rules fixed before the run: the benchmark's docstring.)", "",
             f"Endpoint: mean Dice over the 8 endpoint organs on {len(next(iter(result['finetune_arms'].values())).cases)} "
             f"test cases; {args.seeds} pretraining seeds, {args.replicates} fine-tuning replicates; "
             f"{args.pretrain_steps} pretraining steps, fine-tuning {args.epochs} x {args.iters_per_epoch} iterations."
             + (f" Wall time {wall_s:.0f} s (summed over the runs that completed it)." if wall_s else ""), "", "## Gates", "",
             *comparison_rows({k: g for k, (g, _) in result["gates"].items()}), ""]
    lines += [f"- {name}: {'passes' if ok else 'fails'}" for name, (_, ok) in result["gates"].items()]
    lines += ["", "## Probe: the learning curve (mean over seeds, Dice %)", "", *curve_rows(result, args), "",
              f"## Probe comparisons ({args.pretrain_steps}-step encoders at 10 %)", "",
              *comparison_rows(result["probe"]), "", "## Fine-tuning on the test cases", "",
              *finetune_rows(result), "", "## Fine-tuning comparisons at 10 %", "", *comparison_rows(result["finetune"]),
              "", "## Other comparisons (not part of the rules)", "", *comparison_rows(result["other"]), ""]
    if result["quality"]:
        lines += ["## Pretraining quality (`benchmarks.pretrain_quality`, 16 crops)", "", *quality_table(result["quality"]), ""]
    return "\n".join(lines)


def as_json(result: dict) -> dict:
    def arm(a: Arm) -> dict:
        return {"seeds": a.seeds, "cases": a.cases, "endpoint": a.endpoint.tolist(), "all_organs": a.all_organs.tolist()}

    return {"verdicts": result["verdicts"],
            "gates": {k: {**g.as_dict(), "passes": ok} for k, (g, ok) in result["gates"].items()},
            **{part: {k: c.as_dict() for k, c in result[part].items()} for part in ("probe", "finetune", "other")},
            "probe_arms": {f"{n}|{s}|{f:g}": arm(a) for (n, s, f), a in result["probe_arms"].items()},
            "finetune_arms": {f"{i}|{f:g}": arm(a) for (i, f), a in result["finetune_arms"].items()},
            "quality": result["quality"]}


def learning_curves(result: dict, args, png: Path) -> Path:
    """The probe's endpoint against pretraining steps per objective (mean, t-interval over seeds), with
    the random init and raw patches as bands; one panel per fraction, and the masked MSE ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = result["probe_arms"]
    steps = [*args.keep_steps, args.pretrain_steps]
    fig, axes = plt.subplots(1, len(PROBE_FRACTIONS) + 1, figsize=(5 * (len(PROBE_FRACTIONS) + 1), 4))
    colours = {"voxel": "tab:blue", "gaussian": "tab:red", "random": "0.4", "raw": "0.7"}
    for ax, fraction in zip(axes, PROBE_FRACTIONS):
        for name in ("random", "raw"):
            mean, low, high = arms[name, 0, fraction].mean()
            ax.axhline(100 * mean, color=colours[name], ls="--", label=OBJECTIVE[name])
            if math.isfinite(low):
                ax.axhspan(100 * low, 100 * high, color=colours[name], alpha=0.15)
        for decoder in DECODERS.values():
            stats = np.array([arms[decoder, s, fraction].mean() for s in steps]) * 100
            err = np.nan_to_num(np.abs(stats[:, 1:] - stats[:, :1]).T)
            ax.errorbar(steps, stats[:, 0], yerr=err, color=colours[decoder], marker="o", capsize=3,
                        label=OBJECTIVE[decoder])
        ax.set(xscale="log", xlabel="pretraining steps", ylabel="probe Dice, 8 endpoint organs (%)",
               title=f"frozen-encoder probe at {100 * fraction:.0f} % of the labels")
        ax.legend(fontsize=8)
    ax = axes[-1]
    for decoder in DECODERS.values():
        rows = [r for r in result["quality"] if r["decoder"] == decoder]
        if rows:
            by_step = {s: [r["ours"] / r["baseline"] for r in rows if r["step"] == s] for s in steps}
            ax.plot(steps, [np.mean(by_step[s]) if by_step[s] else np.nan for s in steps], "o-",
                    color=colours[decoder], label=OBJECTIVE[decoder])
    ax.axhline(1.0, color="0.4", ls="--", label="visible-mean baseline")
    ax.set(xscale="log", xlabel="pretraining steps", ylabel="masked MSE / visible-mean baseline",
           title="reconstruction (mean over seeds)")
    ax.legend(fontsize=8)
    fig.suptitle(f"MedGMAE vs voxel-MAE on the phantom: {args.seeds} seeds, error bars = 95 % t-interval over seeds")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def write(result: dict, args, report: Path, wall_s: float | None) -> dict[str, Path]:
    files = {"md": report / "experiment.md", "json": report / "experiment.json", "png": report / "learning_curves.png"}
    write_text_atomic(files["md"], markdown(result, args, wall_s))
    write_json_atomic(files["json"], as_json(result))
    learning_curves(result, args, files["png"])
    return files
