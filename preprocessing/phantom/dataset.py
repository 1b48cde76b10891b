"""Write phantom cases as an nnU-Net v2 raw dataset, atomically and deterministically.

    $nnUNet_raw/Dataset990_AbdomenPhantom/
        imagesTr/phantom_000_0000.nii.gz   labelsTr/phantom_000.nii.gz
        imagesTs/phantom_ts000_0000.nii.gz labelsTs/phantom_ts000.nii.gz
        imagesUnlabeled/phantom_unl000_0000.nii.gz      (images only, for pretraining)
        dataset.json                       nnU-Net's dataset description (AMOS's 15 labels)
        phantom_cases.json                 per case: phase, patient, coverage, spacing, size, orientation,
                                           incidental lesions, organs expected and present
        phantom.json / generation.log      the settings and results of the run that wrote it

With findings (`generate_dataset(..., findings=prevalence)`, `medgmae_make_phantom --findings`) the
cases also carry the abnormalities of `findings.py`, and the dataset (default id 991,
`Dataset991_PhantomFindings`) gains `classification_labels.csv`: case, split (imagesTr -> train,
imagesTs -> valid), one 0/1 column per finding. Without findings nothing changes, byte for byte.

Case i of each kind is drawn from the seed and its own index alone, so a dataset with more cases
contains the smaller one's cases byte for byte.
"""
from __future__ import annotations

import csv
import io
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np

from medgmae_plans.runtime.atomic import atomic_directory, write_json_atomic, write_text_atomic
from medgmae_plans.runtime.paths import dataset_folder_name
from medgmae_plans.runtime import UserError, check_range, check_writable, progress
from preprocessing.validate import check_complete, write_image

from ..labels import AMOS_LABELS
from .anatomy import CaseSpec, expected_labels
from .findings import FINDINGS, apply_findings, draw_findings
from .lesions import draw_incidental
from .population import sample_case
from .render import render_case

DATASET_NAME = "AbdomenPhantom"
DEFAULT_DATASET_ID = 990
FINDINGS_DATASET_NAME = "PhantomFindings"
FINDINGS_DATASET_ID = 991
CLASSIFICATION_LABELS = "classification_labels.csv"
SPLIT_OF_KIND = {"train": "train", "test": "valid"}  # classification split of each labelled kind
# Bump when the anatomy or rendering changes what a seed produces, or the dataset.json nnU-Net reads
# (2: the reorienting reader; 3: a population of patients, contrast phases and scans, issue 25).
GENERATOR_VERSION = 3
KINDS = {"train": ("imagesTr", "labelsTr", "phantom_{:03d}"),
         "test": ("imagesTs", "labelsTs", "phantom_ts{:03d}"),
         "unlabeled": ("imagesUnlabeled", None, "phantom_unl{:03d}")}
_KIND_CODE = {"train": 0, "test": 1, "unlabeled": 2}


def case_spec(seed: int, kind: str, index: int, spacing_scale: float = 1.0) -> tuple[CaseSpec, int]:
    """The spec and noise seed of case `index` of `kind`, independent of how many cases are made."""
    seq = np.random.SeedSequence([seed, _KIND_CODE[kind], index])
    spec_seed, noise_seed = seq.spawn(2)
    spec = sample_case(np.random.default_rng(spec_seed))
    if spacing_scale != 1.0:
        spec = CaseSpec(**{**asdict(spec), "spacing": tuple(round(s * spacing_scale, 4) for s in spec.spacing)})
    return spec, int(noise_seed.generate_state(1)[0])


def generate_dataset(raw_root: str | Path, n_train: int = 20, n_test: int = 0, n_unlabeled: int = 0,
                     seed: int = 0, dataset_id: int = DEFAULT_DATASET_ID, spacing_scale: float = 1.0,
                     workers: int | None = None, pbar: bool = True, log=print,
                     findings: float | None = None) -> Path:
    """Write (or reuse) the phantom dataset under `raw_root`; returns its folder.

    `findings`: the prevalence of each finding (findings.py); None writes the plain phantom.

    An existing folder written with the same settings is reused; one with other content is refused
    (UserError), as is any other dataset already holding `dataset_id`.
    """
    settings = {"generator_version": GENERATOR_VERSION, "n_train": n_train, "n_test": n_test,
                "n_unlabeled": n_unlabeled, "seed": seed, "dataset_id": dataset_id,
                "spacing_scale": spacing_scale}
    if findings is not None:  # only then, so the plain phantom's manifest (and its reuse) is unchanged
        settings["findings_prevalence"] = findings
    _validate(settings)
    raw_root = Path(raw_root)
    name = DATASET_NAME if findings is None else FINDINGS_DATASET_NAME
    target = raw_root / dataset_folder_name(dataset_id, name)
    if _reusable(target, settings, raw_root):
        log(f"{target} already holds this phantom (seed {seed}); reusing it")
        return target
    check_writable(raw_root, "nnUNet_raw folder")
    jobs = [(kind, i, seed, spacing_scale, findings) for kind, n in (("train", n_train), ("test", n_test),
                                                           ("unlabeled", n_unlabeled)) for i in range(n)]
    start = time.time()
    from medgmae_plans.runtime.locks import lock_folder, remove_unheld

    # what a killed (SIGKILL) generation of this dataset left: its work folder, held by no live writer
    remove_unheld(raw_root.glob(f".{target.name}.*.tmp"))
    with atomic_directory(target) as tmp, lock_folder(tmp, "medgmae_make_phantom"):
        for images, labels, _ in KINDS.values():
            (tmp / images).mkdir()
            if labels:
                (tmp / labels).mkdir()
        cases = _write_cases(tmp, jobs, workers, pbar)
        elapsed = time.time() - start
        write_json_atomic(tmp / "dataset.json", _dataset_json(n_train, n_test, n_unlabeled, findings))
        if findings is not None:
            write_text_atomic(tmp / CLASSIFICATION_LABELS, _labels_csv(cases))
        write_json_atomic(tmp / "phantom_cases.json", cases)
        results = {"seconds": round(elapsed, 1), "cases": len(cases)}
        write_json_atomic(tmp / "phantom.json", {"settings": settings, "results": results})
        write_text_atomic(tmp / "generation.log", _log_text(settings, cases, elapsed))
    log(f"wrote {len(cases)} cases to {target} in {elapsed:.1f} s")
    return target


def _validate(settings: dict) -> None:
    if settings["n_train"] < 1:
        raise UserError(f"-n must be at least 1 (got {settings['n_train']}): nnU-Net needs training cases")
    for key in ("n_test", "n_unlabeled"):
        if settings[key] < 0:
            raise UserError(f"--{key[2:]} must be >= 0 (got {settings[key]})")
    if not 1 <= settings["dataset_id"] <= 999:
        raise UserError(f"--dataset-id must be in 1..999 (got {settings['dataset_id']})")
    check_range("--spacing-scale", settings["spacing_scale"], 0, low_open=True)  # NaN and infinity too
    if "findings_prevalence" in settings:
        check_range("--prevalence", settings["findings_prevalence"], 0, 1)


def _reusable(target: Path, settings: dict, raw_root: Path) -> bool:
    prefix = f"Dataset{settings['dataset_id']:03d}_"
    if raw_root.is_dir():
        clash = [p.name for p in raw_root.iterdir() if p.name.startswith(prefix) and p != target]
        if clash:
            raise UserError(f"dataset id {settings['dataset_id']} is already taken by {raw_root / clash[0]}; "
                            "choose another --dataset-id")
    if not target.exists():
        return False
    manifest = target / "phantom.json"
    try:
        existing = json.loads(manifest.read_text())["settings"]
    except (OSError, ValueError, KeyError):
        existing = None
    if existing is not None and existing.get("generator_version") != settings["generator_version"]:
        raise UserError(f"{target} was written by phantom generator version {existing.get('generator_version')}; "
                        f"this is version {settings['generator_version']}: remove it to write it again")
    if existing == settings:
        # same settings, but a cut or damaged case (a copy that ran out of space) must not be reused
        for path in sorted(target.rglob("*.nii.gz")):
            try:
                check_complete(path)
            except UserError as err:
                raise UserError(f"{err}; remove {target} to write the phantom again") from None
        return True
    raise UserError(f"{target} already exists with different content "
                    f"({'no phantom.json' if existing is None else 'other settings'}); "
                    "remove it or choose another --dataset-id")


def _write_cases(folder: Path, jobs: list, workers: int | None, pbar: bool) -> list[dict]:
    workers = min(workers or os.cpu_count() or 1, len(jobs))
    bar = progress(total=len(jobs), enabled=pbar, desc="phantom cases", unit="case")
    if workers <= 1:
        cases = []
        for job in jobs:
            cases.append(_write_case(folder, *job))
            bar.update()
    else:
        # spawn: no inherited threads or locks from the parent (nnU-Net and torch may be imported there)
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            futures = [pool.submit(_write_case, folder, *job) for job in jobs]
            cases = []
            for fut in futures:
                cases.append(fut.result())
                bar.update()
    bar.close()
    return cases


def _write_case(folder: Path, kind: str, index: int, seed: int, spacing_scale: float,
                findings: float | None = None) -> dict:
    import SimpleITK as sitk

    images, labels, pattern = KINDS[kind]
    case_id = pattern.format(index)
    spec, noise_seed = case_spec(seed, kind, index, spacing_scale)
    extra, present = [], None
    if findings is not None:
        present, geometry_seed = draw_findings(seed, _KIND_CODE[kind], index, findings)
        spec, extra = apply_findings(spec, present, geometry_seed)
    case = render_case(spec, noise_seed, extra) if extra else render_case(spec, noise_seed)
    direction = np.diag([-1.0 if f else 1.0 for f in reversed(case.flips)]).ravel().tolist()

    def to_image(array):
        img = sitk.GetImageFromArray(array)
        img.SetSpacing(tuple(float(s) for s in reversed(case.spacing)))
        img.SetOrigin(tuple(float(o) for o in reversed(case.origin)))
        img.SetDirection(direction)
        return img

    write_image(to_image(case.hu), folder / images / f"{case_id}_0000.nii.gz", compress=False)
    present_labels = sorted(int(v) for v in np.unique(case.label) if v)
    if labels:
        write_image(to_image(case.label), folder / labels / f"{case_id}.nii.gz", compress=False)
    info = {"case": case_id, "kind": kind, "shape_zyx": list(case.hu.shape),
            "spacing_zyx": list(case.spacing), "flips_zyx": list(case.flips),
            "pelvis": spec.pelvis, "female": spec.female, "phase": spec.phase,
            "z_range_mm": [round(spec.z_bottom, 1), round(spec.z_top, 1)], "breath_mm": round(spec.breath_mm, 1),
            "noise_hu": round(spec.noise_hu, 1), "blur_mm": round(spec.blur_mm, 2),
            "patient": {k: (round(v, 2) if isinstance(v, float) else v) for k, v in spec.patient.items()
                        if k != "volumes_ml"},
            "incidental": ([k for k, v in draw_incidental(spec).items() if v] if spec.incidental else []),
            "labels_expected": expected_labels(spec), "labels_present": present_labels}
    if findings is not None:
        info["findings"] = present
    return info


def _labels_csv(cases: list[dict]) -> str:
    """case, split, one 0/1 column per finding, for the labelled cases (train -> train, test -> valid)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["case", "split", *FINDINGS])
    for c in cases:
        if c["kind"] in SPLIT_OF_KIND:
            writer.writerow([c["case"], SPLIT_OF_KIND[c["kind"]], *(int(c["findings"][f]) for f in FINDINGS)])
    return buf.getvalue()


def _dataset_json(n_train: int, n_test: int, n_unlabeled: int, findings: float | None = None) -> dict:
    extra = {}
    if findings is not None:
        extra = {"name": FINDINGS_DATASET_NAME, "classification_labels": CLASSIFICATION_LABELS,
                 "findings": list(FINDINGS), "findings_prevalence": findings,
                 "description": "Synthetic abdominal CT phantom with findings (MedGMAE toolkit): HU images, "
                                "AMOS22 task-1 labels, per-case 0/1 findings in classification_labels.csv"}
    return {
        "name": DATASET_NAME,
        "description": "Synthetic abdominal CT phantom (MedGMAE toolkit): HU images, AMOS22 task-1 labels",
        "reference": "generated by medgmae_make_phantom",
        "licence": "CC0-1.0",
        "release": f"{GENERATOR_VERSION}",
        "channel_names": {"0": "CT"},
        "labels": dict(AMOS_LABELS),
        "numTraining": n_train,
        "numTest": n_test,
        "numUnlabeled": n_unlabeled,
        "file_ending": ".nii.gz",
        # A third of the cases are stored flipped (direction -1 on z, or on y and x), as scanners do.
        # nnU-Net's default reader ignores the direction, so the network would see the liver on
        # either side; this reader turns every case to RAS first and writes predictions back in
        # each case's own orientation (nnU-Net's own class, so nnUNetv2_predict does the same).
        "overwrite_image_reader_writer": "SimpleITKIOWithReorient",
        **extra,
    }


def _log_text(settings: dict, cases: list[dict], elapsed: float) -> str:
    lines = [f"medgmae_make_phantom: {json.dumps(settings)}", f"{len(cases)} cases in {elapsed:.1f} s"]
    for c in cases:
        lines.append(f"{c['case']:>14}  {c['phase']:>13}  shape {c['shape_zyx']}  spacing {c['spacing_zyx']}  "
                     f"flips {c['flips_zyx']}  pelvis {c['pelvis']}  labels {c['labels_present']}"
                     + (f"  findings {[f for f, v in c['findings'].items() if v]}" if "findings" in c else ""))
    return "\n".join(lines) + "\n"
