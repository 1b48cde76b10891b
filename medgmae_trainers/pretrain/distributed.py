"""One process or `torchrun` DDP: the same code path, chosen by torchrun's environment variables."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: str) -> DistInfo:
    """Join the process group when launched by torchrun (NCCL on GPUs, gloo on CPUs); else one process.

    `device` is "cpu" or "cuda"; under torchrun each process takes GPU `LOCAL_RANK`.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, world_size, local_rank, dev)


def cleanup_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce(values: torch.Tensor, info: DistInfo, op=dist.ReduceOp.SUM) -> torch.Tensor:
    """In-place all-reduce across ranks (a no-op in one process)."""
    if info.distributed:
        dist.all_reduce(values, op=op)
    return values


def gather_objects(obj, info: DistInfo) -> list:
    """Every rank's `obj`, in rank order (a one-element list in one process)."""
    if not info.distributed:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def weights_digest(model: torch.nn.Module, info: DistInfo) -> str:
    """The sha256 of the model's weights, checked to be the same on every rank.

    DDP keeps every rank's weights bit-identical (same start, all-reduced gradients, same optimiser);
    ranks that disagree would write a checkpoint that is one rank's run only, so that is an error.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    digests = gather_objects(digest.hexdigest(), info)
    if len(set(digests)) != 1:
        raise RuntimeError(f"DDP ranks ended with different weights: {digests}")
    return digests[0]
