"""Pretraining crops: positive:negative 3:1 crop centres, sub-crops per loaded volume, augmentation, workers.

The data stream is a pure function of (seed, rank, chunk index): chunk c loads one volume and cuts
`sub_crops` crops from it with an RNG seeded by (seed, rank, c), and batches take crops in order
(crop i of a rank is sub-crop i % S of chunk i // S). So a resumed run reproduces the exact batches
an uninterrupted run would have seen, whatever the number of background workers.

    positive crop  centred on a labelled foreground voxel (a class drawn uniformly, then a voxel of
                   it, as nnU-Net oversamples), or, for a case without labels, on body tissue
                   (intensity > `body_threshold` in the [0, 1] CT normalisation)
    negative crop  centred on a voxel drawn uniformly from the whole volume
    label-free     (`crop_centres="body"`) labels are never used: every case's positive crops are
                   centred on body tissue, as a collection's, so pretraining on a labelled dataset's
                   images sees no more of its labels than a fine-tuning fraction does
    outside        the volume is padded with 0 (air after the HU [-175, 250] -> [0, 1] mapping)

Augmentation (batchgenerators, probabilities of the paper's section 4.2): mirroring p 0.5 (then each
axis flipped with probability 0.5), 90-degree in-plane rotation p 0.3 (exact, no interpolation, as
the SwinUNETR/VoCo pretraining recipes' RandRotate90), intensity scale x U(0.9, 1.1) p 0.1, intensity
shift + N(0, 0.1) p 0.1.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np

# A case loader returns (image [1, D, H, W], seg [1, D, H, W] or None, properties dict). The arrays
# may be lazy (blosc2 / memmap): crops slice them, only cases without labels are read in full.
CaseLoader = Callable[[], tuple[Any, Any, dict]]


@dataclass(frozen=True)
class PretrainCase:
    """One volume of the pretraining pool: a name for logs and a loader."""

    name: str
    load: CaseLoader = field(repr=False, compare=False)


CROP_CENTRES = ("organs", "body")


@dataclass(frozen=True)
class SamplingConfig:
    crop_size: int = 96
    sub_crops: int = 8
    positive_fraction: float = 0.75
    body_threshold: float = 0.05
    crop_centres: str = "organs"   # CROP_CENTRES: the paper's organ-centred positives, or "body" (label-free)
    augment: bool = True
    p_mirror: float = 0.5
    p_rot90: float = 0.3
    p_scale: float = 0.1
    p_shift: float = 0.1


def build_augmentation(cfg: SamplingConfig):
    """batchgenerators Compose over a dict {"data": [S, 1, s, s, s]}."""
    from batchgenerators.transforms.abstract_transforms import Compose
    from batchgenerators.transforms.color_transforms import BrightnessMultiplicativeTransform, BrightnessTransform
    from batchgenerators.transforms.spatial_transforms import MirrorTransform, Rot90Transform

    return Compose([
        MirrorTransform(axes=(0, 1, 2), p_per_sample=cfg.p_mirror),
        # axes (1, 2) = (y, x): the in-plane rotation of the axial slices.
        Rot90Transform(num_rot=(1, 2, 3), axes=(1, 2), p_per_sample=cfg.p_rot90),
        BrightnessMultiplicativeTransform(multiplier_range=(0.9, 1.1), per_channel=False, p_per_sample=cfg.p_scale),
        BrightnessTransform(mu=0.0, sigma=0.1, per_channel=False, p_per_sample=cfg.p_shift),
    ])


def foreground_candidates(seg, properties: dict | None, rng: np.random.Generator,
                          max_points: int = 20000) -> list[np.ndarray]:
    """Per foreground class, an array [M, 3] of (z, y, x) voxels; [] when there is no labelled foreground.

    Uses nnU-Net's precomputed `class_locations` ([M, 4] with the channel first) when present, so a
    lazily stored segmentation need not be read.
    """
    locations = (properties or {}).get("class_locations")
    if locations:
        out = [np.asarray(v)[:, -3:] for k, v in sorted(locations.items()) if int(k) > 0 and len(v)]
        if out:
            return out
    if seg is None:
        return []
    seg = np.asarray(seg[:])[0]
    out = []
    for label in np.unique(seg):
        if label <= 0:
            continue
        coords = np.argwhere(seg == label)
        if len(coords) > max_points:
            coords = coords[rng.choice(len(coords), max_points, replace=False)]
        out.append(coords)
    return out


def crop_centres(image, seg, properties: dict | None, cfg: SamplingConfig, rng: np.random.Generator):
    """`cfg.sub_crops` centres [(z, y, x)] and a bool per centre (True = positive), in random order."""
    shape = np.array(image.shape[1:])
    n_pos = int(round(cfg.sub_crops * cfg.positive_fraction))
    positive = np.array([True] * n_pos + [False] * (cfg.sub_crops - n_pos))
    rng.shuffle(positive)
    classes = foreground_candidates(seg, properties, rng) if cfg.crop_centres == "organs" else []
    body = None
    if not classes and positive.any():
        # No labels: body tissue (above air) stands in for the foreground.
        coords = np.argwhere(np.asarray(image[:])[0] > cfg.body_threshold)
        body = coords if len(coords) else None
    centres = []
    for pos in positive:
        if pos and classes:
            pool = classes[rng.integers(len(classes))]
            centres.append(pool[rng.integers(len(pool))])
        elif pos and body is not None:
            centres.append(body[rng.integers(len(body))])
        else:
            centres.append(np.array([rng.integers(s) for s in shape]))
    return [tuple(int(v) for v in c) for c in centres], positive


def extract_crop(image, centre: Sequence[int], size: int) -> np.ndarray:
    """The cube of edge `size` centred on `centre` from image [1, D, H, W], zero-padded outside: [1, s, s, s]."""
    out = np.zeros((1, size, size, size), dtype=np.float32)
    src, dst = [], []
    for c, extent in zip(centre, image.shape[1:]):
        lo = c - size // 2
        a, b = max(lo, 0), min(lo + size, extent)
        if b <= a:  # the cube misses the volume on this axis (only for tiny volumes): all padding
            return out
        src.append(slice(a, b))
        dst.append(slice(a - lo, b - lo))
    out[(slice(None), *dst)] = np.asarray(image[(slice(0, 1), *src)], dtype=np.float32)
    return out


def centre_crop(case: PretrainCase, size: int) -> np.ndarray:
    """The cube at the centre of a case's volume, [1, s, s, s]: a fixed crop to watch training on."""
    image, _, _ = case.load()
    return extract_crop(image, [n // 2 for n in image.shape[1:]], size)


class CropChunks:
    """Map-style dataset: index c -> float32 [S, 1, s, s, s], the sub-crops of chunk c (see module doc)."""

    def __init__(self, cases: Sequence[PretrainCase], cfg: SamplingConfig, seed: int = 41, rank: int = 0,
                 world_size: int = 1):
        if not cases:
            raise ValueError("no pretraining cases")
        # Shard the cases across ranks when there are enough; otherwise every rank sees all of them
        # (with its own seed stream, so the crops still differ).
        self.cases = list(cases[rank::world_size]) if len(cases) >= world_size else list(cases)
        self.cfg = cfg
        self.seed = seed
        self.rank = rank
        self.augment = build_augmentation(cfg) if cfg.augment else None

    def case_index(self, chunk: int) -> int:
        """Cases are visited in a fresh seeded permutation every pass over the shard."""
        n = len(self.cases)
        epoch, pos = divmod(chunk, n)
        return int(np.random.default_rng([self.seed, self.rank, epoch, 1]).permutation(n)[pos])

    def __len__(self) -> int:  # nominal: indices are unbounded, the stream cycles
        return len(self.cases)

    def __getitem__(self, chunk: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.rank, int(chunk), 0])
        case = self.cases[self.case_index(chunk)]
        image, seg, properties = case.load()
        centres, _ = crop_centres(image, seg, properties, self.cfg, rng)
        crops = np.stack([extract_crop(image, c, self.cfg.crop_size) for c in centres])
        if self.augment is not None:
            # batchgenerators draws from numpy's global RNG: seed it per chunk and put it back after.
            state = np.random.get_state()
            np.random.seed(int(rng.integers(2 ** 32)))
            try:
                crops = self.augment(data=crops)["data"]
            finally:
                np.random.set_state(state)
        return np.ascontiguousarray(crops, dtype=np.float32)


def _worker_init(_: int) -> None:
    import signal

    import torch

    torch.set_num_threads(1)
    # Ctrl-C / SIGTERM reach the whole process group: workers must not die first, or the main
    # process fails on a dead worker instead of saving its checkpoint. They exit with their parent.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def iterate_batches(chunks: CropChunks, batch_size: int, start_step: int = 0, workers: int = 0) -> Iterator:
    """Yield float32 torch batches [B, 1, s, s, s] for steps start_step, start_step + 1, ... (forever).

    workers > 0 loads chunks in that many background processes (torch DataLoader, in order).
    """
    import torch
    from torch.utils.data import DataLoader

    S = chunks.cfg.sub_crops
    first_crop = start_step * batch_size
    # Our own generator: creating a DataLoader iterator draws a base seed, which must not come from
    # (and shift) the global torch RNG that the masks use, or a resumed run would mask differently.
    loader = DataLoader(chunks, batch_size=None, sampler=itertools.count(first_crop // S), num_workers=workers,
                        worker_init_fn=_worker_init if workers else None, persistent_workers=False,
                        prefetch_factor=2 if workers else None, generator=torch.Generator().manual_seed(chunks.seed))
    pending: list[np.ndarray] = []
    skip = first_crop % S
    for crops in loader:
        crops = crops.numpy() if isinstance(crops, torch.Tensor) else crops
        pending.extend(crops[skip:])
        skip = 0
        while len(pending) >= batch_size:
            batch, pending = pending[:batch_size], pending[batch_size:]
            yield torch.from_numpy(np.stack(batch))


def in_memory_case(name: str, image: np.ndarray, seg: np.ndarray | None = None) -> PretrainCase:
    """A case backed by arrays in memory ([1, D, H, W] each), for tests and benchmarks."""
    return PretrainCase(name, lambda: (image, seg, {}))
