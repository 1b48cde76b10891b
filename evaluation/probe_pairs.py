"""The work of `medgmae_probe`: a representation's probe and its score, one (checkpoint, fraction) pair's
probe.json, skipping the pairs already done, and the loop over the pairs.

A learning curve probes several checkpoints of one architecture at several fractions. What the pairs share is
done once: the command reads the cases once; an encoder's fields of the validation and scored cases are computed
once per checkpoint (its pairs differ only in their training cases: `FieldCache`); the raw-patch baseline, which
does not depend on the encoder, is fitted once per fraction and written into every pair of that fraction. Each
pair's probe.json is written atomically as soon as the pair is done, and a pair whose probe.json holds the same
settings (`RESUME_KEYS`) is skipped, so a killed run continues where it stopped.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from medgmae_plans.constants import HU_WINDOW
from medgmae_plans.runtime.atomic import remove_leftovers, write_json_atomic

from .metrics import confusion_counts, overlap_metrics
from .summary import summarise

PROBE_JSON = "probe.json"
RUNS_JSON = "probe_runs.json"
OVERLAY_PNG = "probe_overlay.png"
OVERLAY_CASES = 3
# The settings that decide what a pair's numbers are of; a probe.json that holds the same ones is not redone.
# The grid is among them so that a changed grid redoes the pairs fitted on the old one; the checkpoint's step
# so that a checkpoint file replaced by a longer run is probed again.
RESUME_KEYS = ("dataset", "configuration", "fold", "checkpoint", "checkpoint_step", "init", "fraction",
               "fraction_seed", "seed", "samples_per_class", "l2_grid")
PENDING, EXISTS, PROBED = "pending", "exists", "probed"


# ---------------------------------------------------------------- one representation's probe and its score

@dataclass
class Probed:
    """One representation's probe: the L2 weights' validation Dice, the chosen one, its scored summary."""
    name: str
    width: int
    l2_by_validation: dict
    l2: float
    summary: dict
    segmentations: list


def score(cases, segmentations: Sequence[np.ndarray], labels: dict[int, str]) -> dict:
    """nnU-Net's summary (Dice per label, nanmean over cases) of probe segmentations against the cases' labels."""
    per_case = []
    for case, seg in zip(cases, segmentations):
        counts = confusion_counts(case.seg, seg, list(labels))
        per_case.append({"reference_file": case.name, "prediction_file": case.name,
                         "metrics": {label: overlap_metrics(*counts[label]) for label in labels}})
    return summarise(per_case, labels)


def label_dice(summary: dict, labels: dict[int, str]) -> tuple[dict[str, float], float]:
    """({label name: mean Dice}, their mean over the labels with a Dice: a label in neither the reference nor
    the prediction of any scored case has none, nnU-Net's NaN, and is left out)."""
    dice = {name: float(summary["mean"][str(label)]["Dice"]) for label, name in labels.items()}
    defined = [v for v in dice.values() if not math.isnan(v)]
    return dice, float(np.mean(defined)) if defined else math.nan


def per_case_dice(summary: dict, labels: dict[int, str]) -> dict[str, dict[str, float | None]]:
    """{case: {label name: Dice}}: a label in neither the case's reference nor its prediction has no Dice
    (nnU-Net's NaN), written as null, because json.dumps (`write_json_atomic`) would write a bare NaN that
    strict JSON readers refuse."""
    return {entry["reference_file"]: {name: json_number(entry["metrics"][str(label)]["Dice"])
                                      for label, name in labels.items()}
            for entry in summary["metric_per_case"]}


def json_number(value) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def probe_representation(rep, train, val, scored, labels: dict[int, str], n_classes: int, seed: int,
                         per_class: int, log, field_of: Callable | None = None) -> Probed:
    """Fit `rep`'s probe on `train` for every L2 weight, keep the best on `val`, segment and score `scored`.
    `field_of(case)` gives a case's field (default: `rep.field` of its image; a `FieldCache` reuses them)."""
    from medgmae_trainers.probe.linear import L2_WEIGHTS, fit_linear, training_samples

    field_of = field_of or (lambda case: rep.field(case.image))
    t0 = time.time()
    rep.fit(train)
    x, y = training_samples([field_of(c) for c in train], [c.seg for c in train], rep.stride, n_classes, per_class,
                            seed)
    val_fields = [field_of(c) for c in val]
    log.info(f"{rep.name}: {x.shape[0]} training voxels x {x.shape[1]} features, {len(val)} validation cases "
             f"({time.time() - t0:.1f} s)")
    best, by_l2 = None, {}
    probe = None
    for l2 in L2_WEIGHTS:
        probe = fit_linear(x, y, n_classes, l2, start=probe)
        segs = [probe.segment(f, rep.stride, c.seg.shape) for f, c in zip(val_fields, val)]
        _, mean = label_dice(score(val, segs, labels), labels)
        by_l2[f"{l2:g}"] = round(mean, 6)
        log.info(f"{rep.name}: L2 {l2:g}: validation mean Dice {mean:.4f}")
        if best is None or mean > best[1]:
            best = (probe, mean, segs)
    probe, _, val_segs = best
    if scored is val:
        segs = val_segs
    else:
        segs = [probe.segment(field_of(c), rep.stride, c.seg.shape) for c in scored]
    log.info(f"{rep.name}: L2 {probe.l2:g} chosen; {time.time() - t0:.1f} s")
    return Probed(rep.name, rep.width, by_l2, probe.l2, score(scored, segs, labels), segs)


class FieldCache:
    """A frozen encoder's fields of the cases every fraction reuses (`keep`: validation and scored), computed
    once per checkpoint. Other cases (a fraction's training cases) are computed when asked and not kept, which
    bounds the memory at fraction 1 of a large dataset. Cases are told apart by identity: the run holds them
    all until it ends."""

    def __init__(self, rep, keep):
        self.rep, self.keep, self.fields = rep, {id(c) for c in keep}, {}

    def __call__(self, case):
        if id(case) not in self.keep:
            return self.rep.field(case.image)
        if id(case) not in self.fields:
            self.fields[id(case)] = self.rep.field(case.image)
        return self.fields[id(case)]


# ---------------------------------------------------------------- the pairs of a run

@dataclass
class Pair:
    """One (checkpoint, fraction) probe and the folder of its probe.json."""
    checkpoint: object          # a `PretrainedEncoder`
    fraction: float
    folder: Path
    state: str = PENDING
    result: dict | None = None  # its probe.json, once it exists

    @property
    def json(self) -> Path:
        return self.folder / PROBE_JSON


@dataclass
class ProbeContext:
    """What every pair of a run shares: its settings, the labels, and (once read) the cases."""
    common: dict                # dataset, configuration, fold, init, fraction_seed, seed, samples_per_class, l2_grid
    labels: dict                # {label: name}, foreground only
    n_classes: int
    window: int
    device: str
    splits: dict                # fraction -> `FoldCases`
    scored_on: str              # "test" | "validation"
    spacing: list
    ras: bool                   # read through the reorienting reader: the overlay turns the arrays
    log: object
    start: float = field(default_factory=time.time)
    train_cases: dict = field(default_factory=dict)   # name -> ProbeCase: the pending fractions' training cases
    val: list = field(default_factory=list)
    scored: list = field(default_factory=list)        # the test cases, or `val` itself

    def identity(self, pair: Pair) -> dict:
        """The `RESUME_KEYS` settings of `pair`'s probe.json."""
        return {**self.common, "checkpoint": str(pair.checkpoint.path),
                "checkpoint_step": pair.checkpoint.metadata.get("step"), "fraction": pair.fraction}

    def train(self, fraction: float) -> list:
        return [self.train_cases[name] for name in self.splits[fraction].train]


def pair_folder(out: Path, checkpoint: Path, fraction: float) -> Path:
    """OUT/<checkpoint file stem>_f<pct>: where one pair of a several-pair run writes."""
    from medgmae_trainers.finetune.fractions import fraction_tag

    return out / f"{Path(checkpoint).stem}_{fraction_tag(fraction)}"


def mark_finished(ctx: ProbeContext, pairs: Sequence[Pair]) -> None:
    """Mark `exists` each pair whose probe.json holds its settings; any other one is probed (again)."""
    for pair in pairs:
        remove_leftovers(pair.folder)  # a write the last run was killed in; the command holds the folder
        if not pair.json.is_file():
            continue
        try:
            old = json.loads(pair.json.read_text(encoding="utf-8"))
            have = old["settings"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            ctx.log.info(f"{pair.json}: unreadable ({type(err).__name__}); probing it again")
            continue
        want = ctx.identity(pair)
        differs = [key for key in RESUME_KEYS if have.get(key) != want[key]]
        if differs:
            key = differs[0]
            ctx.log.info(f"{pair.json}: other settings ({key} {have.get(key)!r}, now {want[key]!r}); probing it again")
            continue
        pair.state, pair.result = EXISTS, old
        ctx.log.info(f"{pair.json}: exists (same settings); skipped")


def encoder_features(ctx: ProbeContext, checkpoint):
    """The checkpoint's frozen encoder as a representation, or its architecture with weights drawn with the seed."""
    import torch

    from medgmae_trainers.networks.vit import ViT3D
    from medgmae_trainers.pretrain.pretrained import load_pretrained
    from medgmae_trainers.probe.features import EncoderFeatures

    random_init = ctx.common["init"] == "random-init"
    if random_init:
        torch.manual_seed(ctx.common["seed"])
    encoder = ViT3D(**checkpoint.encoder_config)
    if not random_init:
        load_pretrained(encoder, checkpoint)
    features = EncoderFeatures(encoder, ctx.window, ctx.device)
    features.name = ctx.common["init"]
    return features


def run_pairs(ctx: ProbeContext, pairs: Sequence[Pair], runs_json: Path | None) -> None:
    """Probe the pending pairs, checkpoint by checkpoint (one encoder and its cached fields each). Each pair's
    probe.json is written when it is done, and `runs_json` (several pairs) after every pair, so both always say
    how far a killed run got."""
    from medgmae_trainers.probe.features import RawPatches

    write_runs(runs_json, ctx, pairs)
    raw_by_fraction: dict[float, Probed] = {}
    fit = dict(labels=ctx.labels, n_classes=ctx.n_classes, seed=ctx.common["seed"],
               per_class=ctx.common["samples_per_class"], log=ctx.log)
    for path in dict.fromkeys(p.checkpoint.path for p in pairs if p.state == PENDING):
        todo = [p for p in pairs if p.checkpoint.path == path and p.state == PENDING]
        features = encoder_features(ctx, todo[0].checkpoint)
        fields = FieldCache(features, ctx.val + ctx.scored)
        for pair in todo:
            ctx.log.info(f"{pair.checkpoint.path.name}, fraction {pair.fraction:g}: probing -> {pair.json}")
            train = ctx.train(pair.fraction)
            probed = probe_representation(features, train, ctx.val, ctx.scored, field_of=fields, **fit)
            if pair.fraction not in raw_by_fraction:  # the baseline does not depend on the checkpoint
                raw = RawPatches(features.stride, features.width, ctx.device)
                raw_by_fraction[pair.fraction] = probe_representation(raw, train, ctx.val, ctx.scored, **fit)
            pair.result = pair_result(ctx, pair, features, probed, raw_by_fraction[pair.fraction])
            write_json_atomic(pair.json, pair.result)
            write_overlay(ctx, pair, probed)
            pair.state = PROBED
            write_runs(runs_json, ctx, pairs)
            ctx.log.info(f"{pair.json}: mean Dice {pair.result['mean_dice']:.4f} "
                         f"(raw {pair.result['baselines']['raw']['mean_dice']:.4f})")


def pair_result(ctx: ProbeContext, pair: Pair, features, probed: Probed, raw: Probed) -> dict:
    """A pair's probe.json: the encoder's Dice per label, overall and per case, the raw baseline's beside it,
    and the settings (`identity` plus what describes the fit)."""
    dice, mean = label_dice(probed.summary, ctx.labels)
    raw_dice, raw_mean = label_dice(raw.summary, ctx.labels)
    split = ctx.splits[pair.fraction]
    identity = ctx.identity(pair)
    settings = {
        "dataset": identity["dataset"], "configuration": identity["configuration"],
        "checkpoint": identity["checkpoint"], "checkpoint_step": identity["checkpoint_step"],
        "init": identity["init"], "fold": identity["fold"], "fraction": identity["fraction"],
        "fraction_seed": identity["fraction_seed"], "seed": identity["seed"],
        "train_cases": split.train, "validation_cases": split.val, "fold_training_cases": split.fold_train,
        "window": ctx.window, "window_step": ctx.window // 2, "token_stride": features.stride,
        "skip_blocks": list(features.taps), "features": {p.name: p.width for p in (probed, raw)},
        "samples_per_class": identity["samples_per_class"], "grid": "preprocessed",
        "l2_by_validation": {p.name: p.l2_by_validation for p in (probed, raw)},
        "l2": {p.name: p.l2 for p in (probed, raw)}, "l2_grid": identity["l2_grid"],
        "device": ctx.device, "threads": _threads(), "wall_s": round(time.time() - ctx.start, 1),
    }
    return {"scored_on": ctx.scored_on, "cases": [c.name for c in ctx.scored], "dice": dice, "mean_dice": mean,
            "per_case": per_case_dice(probed.summary, ctx.labels),
            "baselines": {"raw": {"dice": raw_dice, "mean_dice": raw_mean,
                                  "per_case": per_case_dice(raw.summary, ctx.labels)}},
            "settings": settings}


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def write_runs(path: Path | None, ctx: ProbeContext, pairs: Sequence[Pair]) -> None:
    """OUT/probe_runs.json of a several-pair run: every pair, its folder, its state and mean Dice (null until
    it is done)."""
    if path is None:
        return
    rows = []
    for pair in pairs:
        done = pair.result or {}
        rows.append({"checkpoint": str(pair.checkpoint.path), "fraction": pair.fraction,
                     "folder": pair.folder.name, "probe_json": f"{pair.folder.name}/{PROBE_JSON}",
                     "state": pair.state, "mean_dice": _mean(done),
                     "raw_mean_dice": _mean(done.get("baselines", {}).get("raw", {}))})
    write_json_atomic(path, {"settings": ctx.common, "pairs": rows})


def _mean(result: dict) -> float | None:
    return None if result.get("mean_dice") is None else json_number(result["mean_dice"])


def write_overlay(ctx: ProbeContext, pair: Pair, probed: Probed) -> Path:
    """The probe's segmentations (outlines) over the ground truth (filled) on the first scored cases; arrays read
    through the reorienting reader (RAS) are turned to the radiological view of the other pictures (LPS: y and x
    reversed)."""
    from .plots import OverlayArrays, overlay_arrays

    low, high = HU_WINDOW
    view = (lambda a: a[:, ::-1, ::-1]) if ctx.ras else (lambda a: a)
    spacing = ctx.spacing
    rows = [OverlayArrays(c.name, view(low + c.image * (high - low)), view(c.seg), view(s), spacing)
            for c, s in zip(ctx.scored[:OVERLAY_CASES], probed.segmentations[:OVERLAY_CASES])]
    title = (f"{probed.name} encoder probe ({pair.checkpoint.path.name}, fraction {pair.fraction:g}) on "
             f"{ctx.scored_on} cases: outlines over the ground truth")
    return overlay_arrays(rows, pair.folder / OVERLAY_PNG, {0: "background", **ctx.labels}, title=title)
