"""Training one cell on several processes: one per GPU, on one node or across nodes (torchrun).

What the training loop needs from this module, and nothing more:
  init / teardown          the process group, from the environment torchrun sets
  parallelize              activation checkpointing, then DDP (replicated) or FSDP2 (fully_shard
                           per block, bf16 parameters, fp32 gradient reduction)
  local_rows               rank r's rows of the global batch: the batch a step sees is the same
                           whatever the number of processes, so loss curves match across world sizes
  global_mean, global_sum  reductions of logged numbers (every rank logs the same value)
  save_checkpoint / resume torch.distributed.checkpoint: each rank writes its shards; a checkpoint
                           resumes on any number of processes, a single process included
  save_pretrained          the Hugging Face model, gathered on rank 0

The μP parameter groups are built from parameter names after wrapping (`unwrap`): DDP keeps
the parameters, FSDP2 replaces them with sharded DTensors under the same names, so the
per-parameter learning rate and weight decay of `optimizer_groups` are unchanged. Forward
multipliers live in module attributes and the model config, which wrapping does not touch.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from gdn import checkpoint
from gdn.config import ConfigError

SHARDED_DIR = "dcp"  # inside the run's checkpoint/ directory
PROGRESS_FILE = "progress.json"  # step, loop state and RNG, written beside the shards
STRATEGIES = ("ddp", "fsdp")


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


# ---------------------------------------------------------------- process group


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init(device_preference: str) -> World | None:
    """Joins the process group when started by torchrun; None for a plain single process."""
    if not launched_by_torchrun():
        return None
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = device_preference == "cuda" or (device_preference == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' was requested but no CUDA GPU is visible")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        # A long timeout: rank 0 alone writes the model at the end while the others wait.
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=30),
                                **({"device_id": device} if use_cuda else {}))
    return World(rank=rank, size=size, local_rank=local_rank, device=device)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: World | None) -> None:
    if world is not None:
        dist.barrier()


# ---------------------------------------------------------------- wrapping


def checkpoint_activations(model: torch.nn.Module) -> None:
    """Recomputes each block's activations in backward instead of keeping them.

    The block's forward is replaced on the instance rather than wrapped in a new module,
    so parameter names (and with them the μP groups and checkpoints) stay as they are.
    """
    for block in model.blocks:
        forward = block.forward

        def recomputed(*args, _forward=forward, **kwargs):
            return torch.utils.checkpoint.checkpoint(_forward, *args, use_reentrant=False, **kwargs)

        block.forward = recomputed


def parallelize(model: torch.nn.Module, settings: dict, world: World, bf16: bool) -> torch.nn.Module:
    """DDP or FSDP2 around a model already on `world.device`; `settings` is train.distributed."""
    strategy = settings.get("strategy", "ddp")
    if strategy not in STRATEGIES:
        raise ConfigError(f"config key 'train.distributed.strategy' must be one of {STRATEGIES}, got {strategy!r}")
    if strategy == "ddp":
        device_ids = [world.device.index] if world.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)
    # Parameters all-gathered in bf16 for compute, gradients reduced in fp32, the sharded master
    # weights (what AdamW updates) kept in fp32.
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 \
        else MixedPrecisionPolicy()
    for block in model.blocks:
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model with its own parameter names (DDP adds a `module.` prefix; FSDP2 keeps them)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def gradient_sync(model: torch.nn.Module, enabled: bool):
    """Skips DDP's all-reduce on all but the last micro-batch of a step (the sum is the same)."""
    if not enabled and isinstance(model, DistributedDataParallel):
        return model.no_sync()
    return contextlib.nullcontext()


def clip_grad_norm(model: torch.nn.Module, max_norm: float | None) -> float:
    """Global gradient norm (over every shard) after clipping to `max_norm` (None: no clipping)."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm if max_norm else float("inf"))
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    return norm.item()


# ---------------------------------------------------------------- data and reductions


def local_rows(tensors: tuple[torch.Tensor, ...], world: World | None) -> tuple[torch.Tensor, ...]:
    """Rank r's contiguous slice of the rows of every tensor (the whole batch without a world)."""
    if world is None:
        return tensors
    rows = tensors[0].size(0)
    if rows % world.size:
        raise ConfigError(f"config key 'train.batch_size': {rows} sequences do not split evenly over "
                          f"{world.size} processes; use a multiple of the number of processes")
    per_rank = rows // world.size
    start = world.rank * per_rank
    return tuple(t[start : start + per_rank] for t in tensors)


def global_sum(values: list[float], world: World | None) -> list[float]:
    if world is None:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=world.device)
    dist.all_reduce(t)
    return t.tolist()


def global_mean(value: float, world: World | None) -> float:
    """Mean over ranks of a per-rank mean; ranks hold equal row counts, so this is the global mean."""
    if world is None:
        return value
    return global_sum([value], world)[0] / world.size


# ---------------------------------------------------------------- checkpoints


def _progress(sharded_dir: Path) -> dict | None:
    path = sharded_dir / PROGRESS_FILE
    return json.loads(path.read_text()) if path.exists() else None


def save_checkpoint(ckpt_dir: Path, model, optimizer, step: int, extra: dict, world: World | None,
                    config_fingerprint: str | None = None) -> None:
    """A single process writes a verified `step-<N>.pt` (gdn.checkpoint); several write a sharded checkpoint."""
    if world is None:
        checkpoint.save(ckpt_dir, model, optimizer, step, extra, config_fingerprint)
    else:
        save_sharded(ckpt_dir, model, optimizer, step, extra, world)


def save_sharded(ckpt_dir: Path, model, optimizer, step: int, extra: dict, world: World) -> None:
    """Every rank writes its shards to a fresh directory; rank 0 then moves it into place."""
    tmp = ckpt_dir / (SHARDED_DIR + ".tmp")
    if world.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(tmp))
    dist.barrier()
    if world.is_main:
        progress = {"step": step, "extra": extra, "world_size": world.size,
                    "rng_cpu": torch.get_rng_state().tolist()}
        (tmp / PROGRESS_FILE).write_text(json.dumps(progress))
        checkpoint.replace_dir_atomic(tmp, ckpt_dir / SHARDED_DIR)
    dist.barrier()


def _load_sharded(sharded_dir: Path, model, optimizer) -> tuple[int, dict]:
    # get_state_dict gives the layout this process holds (its shards, FQN keys, optimizer state
    # initialized); DCP fills it from whatever layout the checkpoint was written in.
    model_state, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(state, checkpoint_id=str(sharded_dir))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    progress = _progress(sharded_dir)
    torch.set_rng_state(torch.tensor(progress["rng_cpu"], dtype=torch.uint8))
    return progress["step"], progress["extra"]


def resume(ckpt_dir: Path, model, optimizer, world: World | None, config_fingerprint: str | None = None,
           rejected: list | None = None) -> tuple[int, dict] | None:
    """Restores the newest checkpoint in `ckpt_dir`; returns (next step, loop state) or None.

    A single process writes verified `step-<N>.pt` files (gdn.checkpoint) and reads them or a
    sharded checkpoint; several processes write and read sharded checkpoints (`dcp/`).
    """
    sharded = ckpt_dir / SHARDED_DIR
    progress = _progress(sharded)
    if world is None and progress is None:
        return checkpoint.load(ckpt_dir, model, optimizer, config_fingerprint, rejected=rejected)
    single_step = checkpoint.newest_step(ckpt_dir)
    if world is None:
        if single_step is not None and single_step >= progress["step"]:
            resumed = checkpoint.load(ckpt_dir, model, optimizer, config_fingerprint, rejected=rejected)
            if resumed is not None and resumed[0] >= progress["step"]:
                return resumed
        return _load_sharded(sharded, model, optimizer)
    if single_step is not None and (progress is None or single_step > progress["step"]):
        raise RuntimeError(f"{checkpoint.checkpoint_path(ckpt_dir, single_step)} was written by a single-process "
                           f"run; resume it with one process (python -m gdn train) or remove {ckpt_dir} to start over")
    if progress is None:
        return None
    return _load_sharded(sharded, model, optimizer)


def save_pretrained(model, out_dir: Path, world: World | None) -> None:
    """The Hugging Face model; with several processes the full weights are gathered on rank 0
    (on the CPU) and written there."""
    if world is None:
        model.save_pretrained(out_dir)
        return
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if world.is_main:
        unwrap(model).save_pretrained(out_dir, state_dict=state)
    dist.barrier()

