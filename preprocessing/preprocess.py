"""Running nnU-Net's preprocessing for every case, into a folder that appears only when complete.

nnU-Net's `DefaultPreprocessor.run` deletes its output folder and writes cases into it in place, so
a failure leaves half a dataset. Here each case still goes through nnU-Net's own
`DefaultPreprocessor` (crop, CT normalisation, resampling, foreground sampling, blosc2 files), but
the folder is built under a temporary name and swapped in at the end; a case that fails is reported
with its file name. Collections (no labels, possibly DICOM) use the same per-case code on voxels
read by `image_sources.load_ct`.

Each case's properties get one extra key, `spacing_after_resampling` (the configuration's spacing);
nnU-Net's `spacing` key stays the original spacing, which its exporter needs.

Each configuration has its own data folder and its own signature (`data_signature` sees only that
configuration's block of the plans), so planning `3d_lowres` later leaves `3d_fullres` as it is.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params, nnUNetDatasetBlosc2
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from medgmae_plans.runtime.atomic import atomic_path, disk_full_error, replaced_directory, write_json_atomic
from .image_sources import ImageSource, load_ct
from medgmae_plans.runtime import UserError, os_error_line
from .validate import run_jobs


@dataclass(frozen=True)
class CaseJob:
    """One case to preprocess: nnU-Net raw files (`images`, `label`) or a collection `source`."""
    case_id: str
    images: tuple[str, ...] = ()
    label: str | None = None
    source: ImageSource | None = None

    def describe(self) -> str:
        return self.source.describe() if self.source is not None else self.images[0]


class MedGMAEPreprocessor(DefaultPreprocessor):
    """nnU-Net's DefaultPreprocessor, recording the target spacing in each case's properties."""

    def run_case_npy(self, data, seg, properties, plans_manager, configuration_manager, dataset_json):
        data, seg, properties = super().run_case_npy(data, seg, properties, plans_manager,
                                                     configuration_manager, dataset_json)
        properties["spacing_after_resampling"] = [float(s) for s in configuration_manager.spacing]
        return data, seg, properties


def _save_case(data: np.ndarray, seg: np.ndarray, properties: dict, out_truncated: str, patch_size) -> None:
    """What `DefaultPreprocessor.run_case_save` does after `run_case`, for voxels we read ourselves."""
    data = data.astype(np.float32, copy=False)
    seg = seg.astype(np.int16, copy=False)
    blocks, chunks = comp_blosc2_params(data.shape, tuple(patch_size), data.itemsize)
    blocks_seg, chunks_seg = comp_blosc2_params(seg.shape, tuple(patch_size), seg.itemsize)
    nnUNetDatasetBlosc2.save_case(data, seg, properties, out_truncated, chunks=chunks, blocks=blocks,
                                  chunks_seg=chunks_seg, blocks_seg=blocks_seg)


def preprocess_case(job: CaseJob, out_folder: str, plans: dict, dataset_json: dict, configuration: str) -> dict:
    """Preprocess one case into `out_folder`; errors become a `UserError` naming the input file."""
    plans_manager = PlansManager(plans)
    config = plans_manager.get_configuration(configuration)
    preprocessor = MedGMAEPreprocessor(verbose=False)
    try:
        if job.source is not None:
            data, properties = load_ct(job.source)
            data, seg, properties = preprocessor.run_case_npy(data, None, properties, plans_manager, config,
                                                              dataset_json)
        else:
            data, seg, properties = preprocessor.run_case(list(job.images), job.label, plans_manager, config,
                                                          dataset_json)
        _save_case(data, seg, properties, os.path.join(out_folder, job.case_id), config.patch_size)
    except UserError:
        raise
    except OSError as err:
        if os_error_line(err):  # a full disk or a folder we may not write: not the case's fault
            raise
        raise UserError(f"{job.describe()}: preprocessing failed ({type(err).__name__}: {err})") from err
    except Exception as err:  # nnU-Net reports with asserts and bare RuntimeErrors: name the case
        full = disk_full_error(os.path.join(out_folder, job.case_id), err)
        raise full or UserError(f"{job.describe()}: preprocessing failed ({type(err).__name__}: {err})") from err
    return {"case": job.case_id, "shape": [int(s) for s in data.shape[1:]],
            "original_spacing": [float(s) for s in properties["spacing"]]}


def signature_file(folder: Path) -> Path:
    """Beside a preprocessed data folder (not inside: nnU-Net's reader wants only case files there),
    what the data was made from, so a rerun can reuse it."""
    return folder.with_name(folder.name + ".signature.json")


def configuration_plans(plans: dict, configuration: str) -> dict:
    """The plans as one configuration sees them: the shared keys and its own block only."""
    return {**plans, "configurations": {configuration: plans["configurations"][configuration]}}


def data_signature(files: Sequence[str | Path], plans: dict, dataset_json: dict) -> str:
    """Paths, sizes and modification times of the inputs, with the plans (of one configuration, see
    `configuration_plans`) and dataset.json they were preprocessed with: when any of it changes, the
    preprocessed data is stale."""
    digest = hashlib.sha256(json.dumps([plans, dataset_json], sort_keys=True, default=str).encode())
    for path in map(Path, files):
        stat = path.stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def is_up_to_date(folder: Path, signature: str) -> bool:
    try:
        return folder.is_dir() and json.loads(signature_file(folder).read_text()).get("signature") == signature
    except (OSError, ValueError):
        return False


def preprocess_into(folder: Path, jobs: Sequence[CaseJob], plans: dict, dataset_json: dict, configuration: str,
                    num_processes: int, bar=lambda it: it, signature: str | None = None) -> list[dict]:
    """Preprocess all `jobs` for `configuration` into `folder`, replaced only when every case succeeded.

    `signature` (from `data_signature`) is written beside the data once it is complete.
    """
    signature_file(folder).unlink(missing_ok=True)
    with replaced_directory(folder) as tmp:
        calls = [(job, str(tmp), plans, dataset_json, configuration) for job in jobs]
        results = run_jobs(calls, preprocess_case, num_processes, bar)
    if signature is not None:
        write_json_atomic(signature_file(folder), {"signature": signature, "cases": len(results)})
    return results


def copy_ground_truth(cases: dict, out_folder: Path, file_ending: str) -> int:
    """Copy labels to `gt_segmentations/` as nnU-Net's preprocessing does (validation reads them there)."""
    out_folder.mkdir(parents=True, exist_ok=True)
    copied = 0
    for case_id, files in cases.items():
        src = Path(files["label"])
        dst = out_folder / f"{case_id}{file_ending}"
        if dst.is_file() and dst.stat().st_size == src.stat().st_size and dst.stat().st_mtime >= src.stat().st_mtime:
            continue
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
        copied += 1
    return copied
