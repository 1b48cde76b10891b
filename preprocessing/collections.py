"""Reading preprocessed CT for pretraining: labelled datasets and unlabelled collections alike.

Layout under `nnUNet_preprocessed` (both written by `medgmae_plan_and_preprocess`):

    Dataset218_AMOS2022_postChallenge_task1/      a labelled dataset (`-d AMOS`)
        MedGMAEPlans.json, dataset.json, dataset_fingerprint.json, gt_segmentations/
        MedGMAEPlans_3d_fullres/<case>.b2nd       image  float32 [1, D, H, W], 1.5 mm, HU window -> [0, 1]
                                                  (MedGMAEPlans_3d_lowres/ the same at 3 mm, when planned)
                                <case>_seg.b2nd   labels int16   [1, D, H, W] (-1 = outside the body crop)
                                <case>.pkl        nnU-Net properties (+ spacing_after_resampling)
    Collection_<NAME>/                            an unlabelled collection (`--images DIR --name NAME`)
        MedGMAEPlans.json, dataset.json, sources.json (case -> original file or DICOM folder)
        MedGMAEPlans_3d_fullres/<case>.b2nd       same image format
                                <case>_seg.b2nd   only nnU-Net's body mask (0 / -1), not labels
                                <case>.pkl

Both data folders are ordinary nnU-Net preprocessed folders (`infer_dataset_class(folder)(folder)`
reads them). Datasets are named as everywhere else (id, full name or alias, see
`medgmae_plans.datasets.resolve_dataset`); collections by the NAME given when preprocessing them
(with or without the `Collection_` prefix).

    cases = list_pretraining_cases(["AMOS", "990"], ["FLARE22_unlabelled"])            # 3d_fullres
    cases = list_pretraining_cases(["AMOS"], configuration="3d_lowres")                 # the 3 mm data
    image, seg = load_case(cases[0])   # float32 [1,D,H,W]; int16 [1,D,H,W] or None for collections
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from medgmae_plans.configurations import DEFAULT_CONFIGURATION, geometry
from medgmae_plans.datasets import available_datasets, resolve_dataset
from medgmae_plans.runtime.paths import nnunet_folder
from medgmae_plans.runtime import UserError
from medgmae_plans.runtime.safe_load import load_pickle

COLLECTION_PREFIX = "Collection_"


@dataclass(frozen=True)
class CaseRef:
    """One preprocessed case: where it lives and whether it has organ labels."""
    source: str        # "Dataset990_AbdomenPhantom" or "Collection_NAME"
    case_id: str
    folder: Path       # the MedGMAEPlans_<configuration> folder holding it
    labelled: bool

    @property
    def image_file(self) -> Path:
        return self.folder / f"{self.case_id}.b2nd"


def dataset_data_folder(dataset: str, preprocessed: Path | None = None,
                        configuration: str = DEFAULT_CONFIGURATION) -> Path:
    """The MedGMAE data folder of a labelled dataset (id, full name or alias)."""
    root = Path(preprocessed) if preprocessed is not None else nnunet_folder("nnUNet_preprocessed")
    roots = [root] if preprocessed is not None else None
    name = resolve_dataset(dataset, roots=roots)
    folder = root / name / geometry(configuration).data_identifier
    if not folder.is_dir():
        raise UserError(f"{folder}: missing; run `medgmae_plan_and_preprocess -d {dataset}{_c(configuration)}` first")
    return folder


def _c(configuration: str) -> str:
    """The `-c` that the plan-and-preprocess command needs for a configuration other than the default."""
    return "" if configuration == DEFAULT_CONFIGURATION else f" -c {configuration}"


def collection_data_folder(name: str, preprocessed: Path | None = None,
                           configuration: str = DEFAULT_CONFIGURATION) -> Path:
    """The data folder of an unlabelled collection (`NAME` or `Collection_NAME`)."""
    root = Path(preprocessed) if preprocessed is not None else nnunet_folder("nnUNet_preprocessed")
    bare = name[len(COLLECTION_PREFIX):] if name.startswith(COLLECTION_PREFIX) else name
    folder = root / f"{COLLECTION_PREFIX}{bare}" / geometry(configuration).data_identifier
    if not folder.is_dir():
        existing = sorted(p.name[len(COLLECTION_PREFIX):] for p in root.glob(f"{COLLECTION_PREFIX}*")) if root.is_dir() else []
        raise UserError(f"{folder}: missing; run `medgmae_plan_and_preprocess --images DIR --name {bare}{_c(configuration)}` first "
                        f"(collections that exist: {', '.join(existing) or 'none'})")
    return folder


def folder_cases(folder: Path, labelled: bool) -> list[CaseRef]:
    """The cases of one data folder (`MedGMAEPlans_<configuration>`), sorted."""
    ids = sorted(p.name[:-5] for p in folder.glob("*.b2nd") if not p.name.endswith("_seg.b2nd"))
    return [CaseRef(folder.parent.name, c, folder, labelled) for c in ids]


def list_pretraining_cases(datasets: Sequence[str] = (), image_collections: Sequence[str] = (),
                           preprocessed: Path | None = None,
                           configuration: str = DEFAULT_CONFIGURATION) -> list[CaseRef]:
    """Every preprocessed case of the named datasets and collections, in a stable order."""
    cases: list[CaseRef] = []
    for dataset in datasets:
        folder = dataset_data_folder(dataset, preprocessed, configuration)
        cases += folder_cases(folder, labelled=True)
    for name in image_collections:
        folder = collection_data_folder(name, preprocessed, configuration)
        cases += folder_cases(folder, labelled=False)
    if not cases and (datasets or image_collections):
        raise UserError(f"no preprocessed cases in {', '.join([*datasets, *image_collections])}")
    return cases


def load_case(ref: CaseRef) -> tuple[np.ndarray, np.ndarray | None]:
    """(image float32 [1,D,H,W] in [0,1], labels int16 [1,D,H,W] or None for unlabelled collections)."""
    import blosc2

    try:
        image = np.asarray(blosc2.open(urlpath=str(ref.image_file), mode="r")[:], dtype=np.float32)
        seg = None
        if ref.labelled:
            seg = np.asarray(blosc2.open(urlpath=str(ref.folder / f"{ref.case_id}_seg.b2nd"), mode="r")[:],
                             dtype=np.int16)
    except (OSError, RuntimeError, ValueError) as err:
        raise UserError(f"{ref.image_file}: cannot be read ({err})") from None
    return image, seg


def check_cases(refs: Sequence[CaseRef]) -> None:
    """Open every case's files once before training (`UserError` naming the first bad one).

    Training reads cases in data workers, where a damaged file would end the run with a worker
    traceback after its folder and log were made. Opening a `.b2nd` reads its header and the chunk
    index at its end, so a cut or empty file fails here; the `.pkl` is read whole. A damaged chunk
    inside an intact frame shows only when that chunk is decompressed (`load_case` names the file).
    """
    import blosc2

    for ref in refs:
        files = [ref.image_file] + ([ref.folder / f"{ref.case_id}_seg.b2nd"] if ref.labelled else [])
        for path in files:
            try:
                blosc2.open(urlpath=str(path), mode="r")
            except (OSError, RuntimeError, ValueError) as err:
                raise UserError(f"{path}: not a readable preprocessed case ({err}); rerun "
                                "medgmae_plan_and_preprocess with --clean") from None
        if ref.labelled:
            try:
                load_properties(ref)
            except UserError as err:  # unreadable, or asking for more than plain data (it is not run)
                raise UserError(f"{err}; rerun medgmae_plan_and_preprocess with --clean") from None


def load_properties(ref: CaseRef) -> dict:
    """nnU-Net's per-case properties (original spacing, crop box, `class_locations` for labelled cases)."""
    properties = load_pickle(ref.folder / f"{ref.case_id}.pkl")  # plain data only: a planted pickle runs nothing
    if not isinstance(properties, dict):
        raise UserError(f"{ref.folder / f'{ref.case_id}.pkl'}: not nnU-Net's case properties (a dict)")
    return properties


def available_sources(preprocessed: Path | None = None,
                      configuration: str = DEFAULT_CONFIGURATION) -> dict[str, list[str]]:
    """What could be listed: labelled datasets with MedGMAE data, and collection names."""
    root = Path(preprocessed) if preprocessed is not None else nnunet_folder("nnUNet_preprocessed")
    data_identifier = geometry(configuration).data_identifier
    datasets = [n for n in available_datasets([root]) if (root / n / data_identifier).is_dir()]
    collections = sorted(p.parent.name[len(COLLECTION_PREFIX):]
                         for p in root.glob(f"{COLLECTION_PREFIX}*/{data_identifier}")) if root.is_dir() else []
    return {"datasets": datasets, "collections": collections}
