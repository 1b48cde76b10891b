"""AbdomenAtlas 1.0 Mini: `BDMAP_00000001/ct.nii.gz` + `segmentations/<organ>.nii.gz` binary masks.

The nine masks are merged into one label map with AMOS's names, ids consecutive in AMOS's order.
Masks that overlap go to the higher id (the note counts such voxels); masks other than the nine
(later AbdomenAtlas releases have more) are ignored and listed in the note; a missing mask means
the organ is absent from that case.
"""
from __future__ import annotations

from pathlib import Path

from medgmae_plans.runtime import UserError

from .common import CaseSpec, Conversion, strip_nifti

DATASET_ID = 224
DATASET_NAME = "AbdomenAtlasMini"
MASKS = {"spleen": "spleen", "kidney_right": "right kidney", "kidney_left": "left kidney",
         "gall_bladder": "gall bladder", "liver": "liver", "stomach": "stomach", "aorta": "aorta",
         "postcava": "postcava", "pancreas": "pancreas"}
LABELS = {"background": 0, **{name: i + 1 for i, name in enumerate(MASKS.values())}}


def find(source: Path) -> Conversion:
    source = Path(source)
    case_dirs = sorted(p for p in source.iterdir() if p.is_dir() and (p / "ct.nii.gz").is_file()) \
        if source.is_dir() else []
    if not case_dirs:
        raise UserError(f"{source}: expected per-case folders holding ct.nii.gz (AbdomenAtlas layout)")
    orphans = sorted(p for p in source.iterdir() if p.is_dir() and (p / "segmentations").is_dir()
                     and not (p / "ct.nii.gz").is_file())
    if orphans:
        raise UserError(f"{orphans[0] / 'segmentations'}: masks whose image ct.nii.gz is missing; restore the "
                        "image or remove the case folder")
    notes: list[str] = []
    ignored: set[str] = set()
    train = []
    for case_dir in case_dirs:
        masks_dir = case_dir / "segmentations"
        files = {strip_nifti(p.name): p for p in masks_dir.glob("*.nii*")} if masks_dir.is_dir() else {}
        if not files:
            notes.append(f"{case_dir}: no segmentations/; skipped")
            continue
        ignored.update(set(files) - set(MASKS))
        masks = tuple((files[key], LABELS[name]) for key, name in MASKS.items() if key in files)
        missing = [key for key in MASKS if key not in files]
        if missing:
            notes.append(f"{case_dir.name}: no mask for {', '.join(missing)} (organ treated as absent)")
        train.append(CaseSpec(case_dir.name, case_dir / "ct.nii.gz", masks=masks))
    if ignored:
        notes.append(f"masks ignored (not among the nine classes): {', '.join(sorted(ignored))}")
    notes.append(f"{len(train)} cases")
    return Conversion(DATASET_NAME, LABELS, train, [], None, notes,
                      reference="AbdomenAtlas 1.0 Mini, https://github.com/MrGiovanni/AbdomenAtlas")
