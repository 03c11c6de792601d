"""The command that starts one training job: one process, torchrun on one node, or torchrun per node.

Kept apart from gdn.distributed so the workflow can build the command without importing torch.
"""

from __future__ import annotations

from gdn.config import ConfigError, parallel_settings


def launch_command(python: str, procs_per_node: int, nodes: int = 1, port: int = 29500) -> str:
    """The command prefix that starts `python -m gdn train` on `nodes` x `procs_per_node` processes.

    One process: the interpreter itself (the single-process path). One node: torchrun
    (`python -m torch.distributed.run`) with a private rendezvous, so several jobs can share a
    machine. Several nodes (SLURM): one torchrun per node through srun, meeting at the first
    node of the allocation.
    """
    if procs_per_node < 1 or nodes < 1:
        raise ConfigError("config key 'train.distributed': gpus_per_job and nodes must be at least 1")
    if procs_per_node == 1 and nodes == 1:
        return python
    torchrun = f"{python} -m torch.distributed.run --nproc-per-node {procs_per_node}"
    if nodes == 1:
        return f"{torchrun} --standalone"
    head = "$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n 1)"
    return (f"srun --nodes {nodes} --ntasks-per-node 1 {torchrun} --nnodes {nodes} --rdzv-backend c10d"
            f" --rdzv-id $SLURM_JOB_ID --rdzv-endpoint {head}:{port}")


def job_resources(config: dict, width: int, gpus_per_process: int) -> dict:
    """Scheduler resources of a training job at `width`:

      gpus   processes (= GPUs) per node; torchrun starts this many
      nodes  nodes of the job
      gpu    what the scheduler counts: GPU slots on a local machine, where a GPU holds
             jobs_per_gpu slots and a multi-GPU job takes every slot of its GPUs (so no small
             job lands on them); the job's GPUs on SLURM, whose tiers use jobs_per_gpu 1

    gpus_per_process is 1 when jobs run on GPUs and 0 otherwise (a job without a GPU stays
    one process).
    """
    settings = parallel_settings(config["train"], width)
    gpus = gpus_per_process * settings["gpus_per_job"]
    nodes = settings["nodes"] if gpus_per_process else 1
    slots = gpus * nodes * (config.get("jobs_per_gpu", 1) if gpus > 1 else 1)
    return {"gpu": slots, "gpus": gpus, "nodes": nodes}
