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


# ---------------------------------------------------------------- GPU memory a job declares
#
# Snakemake packs jobs onto a GPU by the `gpu_mem_mb` resource each job declares against the
# card's memory (common.smk registers the card's size as the global limit), so packed jobs
# can never together ask for more than the card has. The figures are deliberate
# over-estimates: every training run records its allocator peak (`peak_gpu_mem_mb` in
# metrics.json), and docs/gpu-runs.md compares the two.

CUDA_CONTEXT_MB = 1000  # CUDA context, cuBLAS/Triton workspaces, allocator slack
SAFETY = 1.5


def vocab_size_of(config: dict) -> int:
    tok = config["tokenizer"]
    return int(tok.get("vocab_size", 4096)) if tok["kind"] == "trained_bpe" else 50257


def parameter_estimate(model: dict, family: str, width: int, vocab: int) -> int:
    """Parameters of `family` at `width` from the shape rules alone (no torch, no model):
    embedding and readout, plus per layer the mixer's and the SwiGLU MLP's matrices."""
    mlp = 3 * model["mlp_ratio"][family] * width * width
    if family == "gdn":
        expand_v = model.get("gdn_expand_v", 1)
        mixer = (2 + 3 * expand_v) * width * width  # q, k; v, output gate, o_proj scale with expand_v
    else:
        mixer = 4 * width * width
    return int(2 * vocab * width + model["n_layers"] * (mixer + mlp))


def _activation_bytes(model: dict, family: str, width: int, vocab: int, tokens: int) -> float:
    # bf16 activations kept for backward (~40 bytes per width coordinate per layer and token,
    # MLP included) and the float32 logits with their softmax and gradient (12 bytes per entry).
    per_token = model["n_layers"] * 40 * width * (1 + model["mlp_ratio"][family]) + 12 * vocab
    return per_token * tokens


def train_memory_mb(config: dict, family: str, width: int) -> int:
    """GPU memory a training job at `width` declares: float32 weights, gradients and AdamW's two
    moments (16 bytes per parameter) plus one micro-batch's activations."""
    model, train = config["model"], config["train"]
    vocab = vocab_size_of(config)
    params = parameter_estimate(model, family, width, vocab)
    tokens = train["batch_size"] * train["seq_len"]
    total = 16 * params + _activation_bytes(model, family, width, vocab, tokens)
    return int(CUDA_CONTEXT_MB + SAFETY * total / 2**20)


def eval_memory_mb(config: dict, family: str, width: int) -> int:
    """An evaluation job: float32 weights and one batch of inference activations and logits
    (lm-eval's loglikelihood batches keep a few copies of the logits, hence x3)."""
    model, evaluate = config["model"], config.get("evaluate") or {}
    vocab = vocab_size_of(config)
    params = parameter_estimate(model, family, width, vocab)
    tokens = evaluate.get("batch_size", 32) * evaluate.get("context", config["train"]["seq_len"])
    total = 4 * params + 3 * _activation_bytes(model, family, width, vocab, tokens)
    return int(CUDA_CONTEXT_MB + SAFETY * total / 2**20)


def coord_memory_mb(config: dict, family: str) -> int:
    """A coordinate check trains its widest model (and keeps the initial weights for the update parts)."""
    coord = config.get("coordcheck") or {}
    model = dict(config["model"], n_layers=coord.get("n_layers", config["model"]["n_layers"]))
    width = max(coord.get("widths", [config["model"]["base_width"]]))
    vocab = vocab_size_of(config)
    params = parameter_estimate(model, family, width, vocab)
    tokens = coord.get("batch_size", 8) * coord.get("seq_len", 256)
    total = 20 * params + 2 * _activation_bytes(model, family, width, vocab, tokens)
    return int(CUDA_CONTEXT_MB + SAFETY * total / 2**20)
