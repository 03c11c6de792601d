"""Outside models in the inference table, at one of our named shapes, each on its own fastest
documented decoding path, with random weights (speed and memory only):

- `hf_llama`: transformers' LlamaForCausalLM with our Transformer's shape, a static KV cache and
  `generate`'s compiled decoding step (`cache_implementation="static"`; transformers compiles the
  step itself where it can);
- `fla_gdn`, `fla_mamba2`, `fla_rwkv7`: flash-linear-attention's GatedDeltaNetForCausalLM (our
  GDN's shape), Mamba2ForCausalLM and RWKV7ForCausalLM (width and vocabulary of the shape, as
  many layers as brings their parameter count closest to our GDN's), through their `generate`.

These are the claim's Mamba and RWKV rows. Every peer is timed the same way: the prompt's forward
pass with the cache on (prefill), and `generate` of `decode_tokens` greedy tokens after the same
prompt; decoding's time per step is (generate - prefill) / (decode_tokens - 1). A peer that cannot
run here gives a row with its status and the error, not a gap.
"""

from __future__ import annotations

import traceback

import torch

from gdn.bench import inference, reference_models, timing
from gdn.build import shape_for_width

PEERS = ("hf_llama", "fla_gdn", "fla_mamba2", "fla_rwkv7")
PATH = {"hf_llama": "hf-static-compiled", "fla_gdn": "fla-generate", "fla_mamba2": "fla-generate",
        "fla_rwkv7": "fla-generate"}


def _ours(shape: dict, family: str) -> dict:
    spec = {k: v for k, v in shape.items() if k not in ("name", "width")}
    return shape_for_width(spec, family, shape["width"])


def _llama_config(shape: dict, vocab: int, max_len: int):
    from transformers import LlamaConfig

    ours = _ours(shape, "transformer")
    return LlamaConfig(hidden_size=ours["d_model"], num_hidden_layers=ours["n_layers"],
                       num_attention_heads=ours["n_heads"], num_key_value_heads=ours["n_heads"],
                       head_dim=ours["head_dim"], intermediate_size=ours["mlp_hidden"], vocab_size=vocab,
                       max_position_embeddings=max_len, tie_word_embeddings=False, pad_token_id=0)


def _fla_config(peer: str, shape: dict, vocab: int, n_layers: int | None = None):
    ours = _ours(shape, "gdn")
    layers = n_layers or ours["n_layers"]
    if peer == "fla_gdn":
        return reference_models.fla_gdn_config(shape, vocab, layers, use_cache=True, pad_token_id=0)
    if peer == "fla_mamba2":
        from fla.models import Mamba2Config

        return Mamba2Config(hidden_size=ours["d_model"], num_hidden_layers=layers, vocab_size=vocab, head_dim=64,
                            state_size=128, expand=2, use_cache=True, pad_token_id=0)
    if peer == "fla_rwkv7":
        from fla.models import RWKV7Config

        return RWKV7Config(hidden_size=ours["d_model"], num_hidden_layers=layers, vocab_size=vocab, head_dim=64,
                           use_cache=True, pad_token_id=0)
    raise ValueError(f"unknown peer {peer!r}; known: {PEERS}")


# Optional packages a peer's fastest documented path needs; without them fla falls back to slower
# code (its Mamba2 prints so), and the row says which were missing.
FAST_PATH_PACKAGES = {"fla_mamba2": ("causal_conv1d", "mamba_ssm")}


def missing_fast_path(peer: str) -> str | None:
    """A note naming the packages of `peer`'s fastest path that are not installed, or None."""
    import importlib.util

    missing = [m for m in FAST_PATH_PACKAGES.get(peer, ()) if importlib.util.find_spec(m) is None]
    if not missing:
        return None
    return (f"not its fastest documented path: {', '.join(missing)} not installed, so fla uses its "
            f"slower fallback kernels")


def _fla_class(peer: str):
    from fla import models

    return {"fla_gdn": models.GatedDeltaNetForCausalLM, "fla_mamba2": models.Mamba2ForCausalLM,
            "fla_rwkv7": models.RWKV7ForCausalLM}[peer]


def _count_on_meta(cls, config) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in cls(config).parameters())


def matched_layers(peer: str, shape: dict, vocab: int, target_params: int) -> int:
    """Layers of `peer` at this width whose parameter count is closest to `target_params`."""
    cls = _fla_class(peer)
    # Two and three layers (RWKV-7's initialization divides by the layer count minus one).
    two, three = (_count_on_meta(cls, _fla_config(peer, shape, vocab, n)) for n in (2, 3))
    per_layer, rest = three - two, two - 2 * (three - two)
    return max(1, round((target_params - rest) / per_layer))


def build(peer: str, shape: dict, vocab: int, device: torch.device, max_len: int, target_params: int):
    """(model in bf16 on `device`, description)."""
    if peer == "hf_llama":
        from transformers import LlamaForCausalLM

        model = LlamaForCausalLM(_llama_config(shape, vocab, max_len))
        model.generation_config.cache_implementation = "static"
        desc = "transformers LlamaForCausalLM, static cache, generate's compiled step"
    else:
        from gdn_kernels import fla_reference

        fla, note = fla_reference.load()
        if fla is None:
            raise RuntimeError(note)
        layers = None if peer == "fla_gdn" else matched_layers(peer, shape, vocab, target_params)
        model = _fla_class(peer)(_fla_config(peer, shape, vocab, layers))
        desc = f"fla {fla.__version__} {type(model).__name__}, {model.config.num_hidden_layers} layers, generate"
    return model.to(device=device, dtype=torch.bfloat16).eval(), desc


def _tensor_bytes(obj, seen=None) -> int:
    """Bytes of the distinct tensors reachable from a cache object (lists, dicts, attributes)."""
    seen = set() if seen is None else seen
    if torch.is_tensor(obj):
        key = (obj.data_ptr(), obj.numel())
        if key in seen:
            return 0
        seen.add(key)
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v, seen) for v in obj)
    if hasattr(obj, "__dict__") and not isinstance(obj, type):
        return sum(_tensor_bytes(v, seen) for v in vars(obj).values())
    return 0


def gdn_parameter_count(shape: dict, vocab: int) -> int:
    """Our GDN's parameters at the shape (counted on the meta device), the target for matched layers."""
    from gdn.build import FAMILIES, model_config

    spec = {k: v for k, v in shape.items() if k not in ("name", "width")}
    spec.setdefault("base_width", shape["width"])
    config = model_config(spec, "gdn_mup", shape["width"], vocab)
    with torch.device("meta"):
        return FAMILIES["gdn"][1](config).num_parameters_split()["total"]


def measure(peer: str, shape: dict, prompt_len: int, batch: int, decode_tokens: int, device: torch.device,
            iters: int, vocab_size: int, target_params: int | None = None,
            hbm_override: float | None = None) -> list[dict]:
    row = {"suite": "inference", "shape": shape["name"], "variant": peer, "path": PATH[peer],
           "prompt_len": prompt_len, "batch": batch, "decode_tokens": decode_tokens, "peer": True}
    if device.type != "cuda":
        return [{**row, "status": "skipped", "note": "peers are timed on a CUDA GPU only"}]
    model = None
    try:
        target = target_params or gdn_parameter_count(shape, vocab_size)
        model, row["note"] = build(peer, shape, vocab_size, device, prompt_len + decode_tokens + 8, target)
        slower = missing_fast_path(peer)
        if slower:
            row["note"] += "; " + slower
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        row.update(weights_gb=weights / 2**30, params_total=sum(p.numel() for p in model.parameters()))
        row.update(_time(model, prompt_len, batch, decode_tokens, device, iters, vocab_size))
        recurrent = peer != "hf_llama"  # a recurrent state is read and written back each step
        floor_bytes = weights + row["cache_bytes"] * (2 if recurrent else 1)
        bandwidth = inference.hbm_bytes_per_s(device, hbm_override)
        row["floor_bytes_per_step"] = floor_bytes
        if bandwidth:
            row["floor_ms_per_step"] = floor_bytes / bandwidth * 1e3
            row["floor_fraction"] = row["floor_ms_per_step"] / row["decode_ms_per_token"]
        row["status"] = "ok"
    except torch.OutOfMemoryError:
        row["status"] = "out of memory"
    except Exception as error:  # a peer that cannot run here is listed with the reason
        row["status"] = "error"
        row["error"] = f"{type(error).__name__}: {error}"[:2000]
        row["traceback"] = traceback.format_exc(limit=6)[-4000:]
    finally:
        del model
        torch.cuda.empty_cache()
    return [row]


@torch.no_grad()
def _time(model, prompt_len: int, batch: int, decode_tokens: int, device: torch.device, iters: int,
          vocab: int) -> dict:
    ids = torch.randint(1, vocab, (batch, prompt_len), device=device)
    mask = torch.ones_like(ids)
    inference._reset_peak(device)

    def prefill():
        return model(input_ids=ids, attention_mask=mask, use_cache=True)

    def generate():
        return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=decode_tokens,
                              min_new_tokens=decode_tokens, do_sample=False, use_cache=True, pad_token_id=0)

    cache_bytes = _tensor_bytes(prefill().past_key_values)
    stats = timing.interleaved({"prefill": prefill, "generate": generate}, device, iters, warmup=2)
    prefill_ms, generate_ms = stats["prefill"]["median_ms"], stats["generate"]["median_ms"]
    step_ms = (generate_ms - prefill_ms) / max(1, decode_tokens - 1)
    row = {"prefill_ms": prefill_ms, "prefill_tokens_per_s": batch * prompt_len / (prefill_ms / 1e3),
           "generate_ms": generate_ms, "decode_ms_per_token": step_ms,
           "decode_tokens_per_s": batch / (step_ms / 1e3), "cache_bytes": cache_bytes, "cache_gb": cache_bytes / 2**30}
    if device.type == "cuda":
        row["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    return row
