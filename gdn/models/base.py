"""What both model families share: embedding, pre-norm blocks, readout, loss, caching.

Each family supplies a `Block` whose mixer implements `forward(x, cache=None)` returning
(y, new_cache). Inference uses `prefill` then repeated `decode_step`: a KV cache for the
Transformer, the recurrent state (plus short-conv tail) for GDN.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from gdn_kernels import add_rms_norm, silu_mul
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

from gdn.models import generation
from gdn.models.generation import StaticCache
from gdn.models.layers import RMSNorm, ScaledEmbedding, ScaledLinear, SwiGLU


def _refused_by_fast_path(kwargs: dict) -> str | None:
    """The first generate() argument the static-cache path does not implement, if any."""
    for key, value in kwargs.items():
        if value is None or key == "use_cache":
            continue
        if key in ("num_beams", "num_return_sequences") and value == 1:
            continue
        if key in ("return_dict_in_generate", "output_scores", "output_logits", "synced_gpus") and not value:
            continue
        return key
    return None


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of position t's logits against token t+1 (float32; -100 is ignored)."""
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)).float(), labels[:, 1:].reshape(-1), ignore_index=-100
    )


class Block(nn.Module):
    def __init__(self, config, mixer: nn.Module):
        super().__init__()
        self.mixer_norm = RMSNorm(config.d_model, config.norm_eps)
        self.mixer = mixer
        self.mlp_norm = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = SwiGLU(config.d_model, config.mlp_hidden)

    def forward(self, x, cache=None, **mixer_inputs):
        h, new_cache = self.mixer(self.mixer_norm(x), cache=cache, **mixer_inputs)
        x = x + h
        x = x + self.mlp(self.mlp_norm(x))
        return x, new_cache

    def decode_weights(self) -> dict:
        """Copies of the weights the decode step multiplies by one token, concatenated per input."""
        return {"mixer_in": self.mixer.decode_input_weight(),
                "mlp_in": torch.cat([self.mlp.gate_proj.weight, self.mlp.up_proj.weight])}

    def static_step(self, x, h, layer_cache: dict, weights: dict, **step_inputs):
        """One token [B, d] through the block, reading and writing the layer's static cache in place.
        `h` is the previous block's last branch output, not yet added to the residual stream `x`
        (None before the first block): each residual add is fused with the norm that follows it.
        Returns (residual stream, this block's MLP output)."""
        x, y = add_rms_norm(x, h, self.mixer_norm.weight, self.mixer_norm.eps)
        h = self.mixer.static_step(y, layer_cache, weights["mixer_in"], **step_inputs)
        x, y = add_rms_norm(x, h, self.mlp_norm.weight, self.mlp_norm.eps)
        return x, self.mlp.down_proj(silu_mul(F.linear(y, weights["mlp_in"])))


class CausalLMBase(PreTrainedModel, GenerationMixin):
    base_model_prefix = "model"
    supports_gradient_checkpointing = False
    _no_split_modules = ["Block"]

    def __init__(self, config):
        super().__init__(config)
        self.embed = ScaledEmbedding(config.vocab_size, config.d_model, config.multiplier("embed"))
        self.blocks = nn.ModuleList([Block(config, self.make_mixer(config, i)) for i in range(config.n_layers)])
        self.final_norm = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = ScaledLinear(config.d_model, config.readout_rows, config.multiplier("lm_head"))
        self.post_init()

    def make_mixer(self, config, layer_idx: int) -> nn.Module:
        raise NotImplementedError

    # Initialization is the parametrization's job (gdn.parametrization); keep module defaults here.
    def _init_weights(self, module):
        pass

    def get_input_embeddings(self):
        return self.embed

    def set_input_embeddings(self, value):
        self.embed = value

    def get_output_embeddings(self):
        return self.lm_head

    def mixer_inputs(self, seq_len: int, caches) -> dict:
        """What every layer's mixer needs besides its input, computed once per forward (the
        Transformer's rotary tables); passed to each block as keyword arguments."""
        return {}

    def hidden_states(self, input_ids, caches=None):
        x = self.embed(input_ids)
        shared = self.mixer_inputs(input_ids.shape[1], caches)
        new_caches = []
        for i, block in enumerate(self.blocks):
            x, c = block(x, cache=None if caches is None else caches[i], **shared)
            new_caches.append(c)
        return self.final_norm(x), new_caches

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        # attention_mask is accepted for API compatibility; batches here are never left-padded
        # (lm-eval pads on the right, and a causal model ignores what comes after a token).
        h, _ = self.hidden_states(input_ids)
        logits = self.readout(h)
        loss = None if labels is None else self._loss_fn(logits, labels)
        return CausalLMOutput(loss=loss, logits=logits)

    _loss_fn = staticmethod(next_token_loss)

    def readout(self, h: torch.Tensor) -> torch.Tensor:
        """Logits over the vocabulary (the readout's padding rows cut off)."""
        logits = self.lm_head(h)
        return logits if logits.size(-1) == self.config.vocab_size else logits[..., : self.config.vocab_size]

    def compile_blocks(self, **options) -> None:
        """torch.compile each block and the loss ("regional" compilation: every layer runs the
        same code, so one compiled graph serves them all and compile time does not grow with
        depth). Fuses the elementwise work around the matrix products (norms, SiLU, the short
        convolution, the rotary embedding, the float32 loss); the GDN recurrence stays the
        hand-written Triton kernels, outside the graphs. Weights and state_dict keys are unchanged.
        """
        for block in self.blocks:
            block.compile(**options)
        self._loss_fn = torch.compile(next_token_loss, **options)

    # Whether the prompt can be run in segments with the cache carried between them (a recurrent
    # model's state can; the Transformer's attention needs every earlier key at once).
    supports_segmented_prefill = False

    @torch.no_grad()
    def prefill(self, input_ids, segment_len: int | None = None):
        """Runs the prompt; returns (logits of the last position [B, V], cache).

        With `segment_len`, the prompt runs `segment_len` tokens at a time, each segment
        continuing from the cache the previous one left: the same result, with the transient
        memory of one segment instead of the whole prompt."""
        caches = [self.empty_cache() for _ in self.blocks]
        T = input_ids.shape[1]
        if segment_len is None or segment_len >= T:
            h, caches = self.hidden_states(input_ids, caches=caches)
            return self.readout(h[:, -1]), caches
        if not self.supports_segmented_prefill:
            raise ValueError(f"{type(self).__name__} cannot prefill in segments: its attention needs the whole "
                             f"prompt at once (segment_len={segment_len}, prompt of {T} tokens)")
        if segment_len < 1:
            raise ValueError(f"segment_len must be at least 1, got {segment_len}")
        for start in range(0, T, segment_len):
            h, caches = self.hidden_states(input_ids[:, start : start + segment_len], caches=caches)
        return self.readout(h[:, -1]), caches

    @torch.no_grad()
    def decode_step(self, token_ids, caches):
        """One token per sequence ([B] or [B, 1]); returns (logits [B, V], the cache, updated in place)."""
        if token_ids.dim() == 1:
            token_ids = token_ids[:, None]
        h, caches = self.hidden_states(token_ids, caches=caches)
        return self.readout(h[:, -1]), caches

    def empty_cache(self):
        """Marker for an empty per-layer cache (each mixer fills in its own kind)."""
        return {}

    # Fast decoding (gdn.models.generation): caches of fixed shape and a step with no host-side
    # dependence on the position, so that it can be captured once as a CUDA graph.

    def allocate_static_cache(self, batch: int, max_len: int, device=None, dtype=None) -> StaticCache:
        """Buffers for `batch` sequences of up to `max_len` tokens (prompt + generated), allocated once."""
        device = self.embed.weight.device if device is None else torch.device(device)
        dtype = self.embed.weight.dtype if dtype is None else dtype
        cache = StaticCache(batch, max_len, pos=torch.zeros(1, dtype=torch.long, device=device))
        cache.layers = [block.mixer.allocate_static(batch, max_len, device, dtype) for block in self.blocks]
        cache.shared = self.static_tables(max_len, device)
        if device.type != "meta":  # a cache on "meta" only measures sizes (gdn.bench.inference)
            with torch.no_grad():
                cache.weights = [block.decode_weights() for block in self.blocks]
        return cache

    def static_tables(self, max_len: int, device) -> dict:
        """Per-model tables every step reads (the Transformer's rotary tables); none by default."""
        return {}

    def static_step_inputs(self, cache: StaticCache) -> dict:
        """What every layer's static step needs, computed once per token from the cache's position."""
        return {}

    @torch.no_grad()
    def prefill_static(self, input_ids, cache: StaticCache, segment_len: int | None = None):
        """Runs the prompt (as `prefill`) and copies its cache into `cache`; returns the logits of the
        prompt's last position [B, V]. The cache's position is then the prompt's length."""
        B, T = input_ids.shape
        if B != cache.batch or T >= cache.max_len:
            raise ValueError(f"a prompt of shape {tuple(input_ids.shape)} does not fit a static cache of batch "
                             f"{cache.batch} and {cache.max_len} tokens (it needs room for at least one more)")
        logits, caches = self.prefill(input_ids, segment_len)
        for block, static, dynamic in zip(self.blocks, cache.layers, caches, strict=True):
            block.mixer.load_static(static, dynamic, T)
        cache.pos.fill_(T)
        return logits

    @torch.no_grad()
    def static_decode_step(self, token_ids, cache: StaticCache):
        """Logits [B, V] of one token per sequence ([B]) at the cache's position, which advances by
        one. Fixed shapes, no host synchronization: safe to capture in a CUDA graph."""
        x, h = self.embed(token_ids), None
        inputs = self.static_step_inputs(cache)
        for block, layer, weights in zip(self.blocks, cache.layers, cache.weights, strict=True):
            x, h = block.static_step(x, h, layer, weights, **inputs)
        _, y = add_rms_norm(x, h, self.final_norm.weight, self.final_norm.eps)
        logits = self.readout(y)
        cache.pos.add_(1)
        return logits

    def generate(self, input_ids=None, max_new_tokens=None, max_length=None, do_sample=False, temperature=1.0,
                 top_k=None, top_p=None, eos_token_id=None, pad_token_id=None, attention_mask=None,
                 stopping_criteria=None, use_graph=None, **kwargs):
        """transformers' `generate`, on the static-cache, CUDA-graph path (gdn.models.generation) for
        greedy and sampled decoding of unpadded prompts. Anything else that path does not do (beam search,
        other logits processors) goes to transformers' own `generate`; a padded batch is refused."""
        if attention_mask is not None and not bool(attention_mask.all()):
            # Neither path could honour it: the models take no padding mask, so padded positions
            # would be read as tokens.
            raise ValueError("generate() got a padded batch (attention_mask has zeros), which these models cannot "
                             "mask: pass prompts of equal length in a batch, or one prompt at a time")
        if input_ids is None or _refused_by_fast_path(kwargs):
            return super().generate(input_ids=input_ids, max_new_tokens=max_new_tokens, max_length=max_length,
                                    do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p,
                                    eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                                    attention_mask=attention_mask, stopping_criteria=stopping_criteria, **kwargs)
        if max_new_tokens is None:
            max_new_tokens = (max_length or self.generation_config.max_length or 20) - input_ids.shape[1]
        eos = eos_token_id if eos_token_id is not None else self.generation_config.eos_token_id
        stop = None
        if stopping_criteria:
            def stop(ids):
                return bool(torch.as_tensor(stopping_criteria(ids, None)).all())
        return generation.generate(self, input_ids, max_new_tokens, do_sample=bool(do_sample),
                                   temperature=temperature or 1.0, top_k=top_k, top_p=top_p, eos_token_id=eos,
                                   pad_token_id=pad_token_id, stop_check=stop, use_graph=use_graph)

    def num_parameters_split(self) -> dict:
        padding = (self.lm_head.out_features - self.config.vocab_size) * self.lm_head.in_features
        total = sum(p.numel() for p in self.parameters()) - padding  # padding rows never act
        embedding = self.embed.weight.numel()
        return {"total": total, "non_embedding": total - embedding}
