"""Fast decoding: caches allocated once, a per-token step with fixed shapes, replayed as a CUDA graph.

Eager decoding at batch 1 is bound by the host: hundreds of small kernels per token, each
launched from Python. Here the per-token step (`model.static_decode_step`) reads and writes
only buffers allocated before the first token (`StaticCache`): the Transformer's KV cache sized
to the whole context, GDN's recurrent state and short-convolution tails, and the position as a
device tensor, so nothing in the step depends on a host-side value. On CUDA that step is
captured once in a `torch.cuda.CUDAGraph` and replayed per token; on the CPU (or where capture
fails) the same step runs eagerly, with the same results. Sampling stays on the device, and
tokens are read back to the host once, after the last one.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch


@dataclass
class StaticCache:
    """Per-layer buffers of fixed shape, plus the next write position (a device tensor [1])."""

    batch: int
    max_len: int  # tokens the cache holds: prompt + generated
    pos: torch.Tensor
    layers: list[dict] = field(default_factory=list)
    shared: dict = field(default_factory=dict)  # per-model tables (the Transformer's rotary cos/sin)
    # Per layer, the decode step's concatenated weights (each layer's input projections, its MLP's
    # gate and up): one matrix-vector product instead of several, at the cost of a copy of those
    # weights for as long as the cache lives (weights_nbytes). Not cache: left out of nbytes().
    weights: list[dict] = field(default_factory=list)

    def recurrent_tensors(self) -> list[torch.Tensor]:
        """What a step overwrites in a way a later step cannot undo (the position, GDN's state and
        convolution tails); the Transformer's KV rows at `pos` are rewritten by the next real step."""
        out = [self.pos]
        for layer in self.layers:
            out += [t for key, t in layer.items() if key in ("state", "tail_q", "tail_k", "tail_v")]
        return out

    def nbytes(self) -> int:
        tensors = [self.pos, *(t for layer in self.layers for t in layer.values())]
        return sum(t.numel() * t.element_size() for t in tensors)

    def weights_nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for layer in self.weights for t in layer.values())


class DecodeGraph:
    """`model.static_decode_step` on fixed input/output buffers, captured as a CUDA graph.

    `path` says what runs: "graph" (captured on CUDA) or "eager" (the CPU, `use_graph=False`, or a
    capture that failed: `fallback_reason` says why). Both compute the same step.
    """

    def __init__(self, model, cache: StaticCache, use_graph: bool | None = None, warmup: int = 2):
        self.model, self.cache = model, cache
        self.step_fn = model.static_decode_step
        device = cache.pos.device
        # Counted on the host (one read of the position, here), so that a step past the end of the
        # buffers is refused with an error rather than a write out of bounds on the device.
        self.remaining = cache.max_len - int(cache.pos)
        self.tokens = torch.zeros(cache.batch, dtype=torch.long, device=device)
        self.logits: torch.Tensor | None = None
        self.graph = None
        self.fallback_reason = None
        want = device.type == "cuda" if use_graph is None else use_graph
        if want and device.type != "cuda":
            self.fallback_reason = f"CUDA graphs need a CUDA device, the cache is on {device.type}"
        elif want:
            try:
                self._capture(warmup)
            except RuntimeError as error:  # e.g. an op that synchronizes the host inside the step
                self.graph, self.fallback_reason = None, f"capture failed: {type(error).__name__}: {error}"
                warnings.warn(f"CUDA graph capture of the decode step failed, decoding eagerly (slower): {error}",
                              RuntimeWarning, stacklevel=2)
        self.path = "graph" if self.graph is not None else "eager"

    def _capture(self, warmup: int):
        # Warm-up runs (Triton compilation, cuBLAS workspaces) mutate the caches: keep copies of what
        # they change irreversibly and put them back, so capturing leaves the cache as it found it.
        saved = [t.clone() for t in self.cache.recurrent_tensors()]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                self.step_fn(self.tokens, self.cache)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.logits = self.step_fn(self.tokens, self.cache)
        for buffer, value in zip(self.cache.recurrent_tensors(), saved, strict=True):
            buffer.copy_(value)
        self.graph = graph

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits [B, V] for `tokens` [B] at the cache's position, which then advances by one. The
        returned tensor is the graph's output buffer: the next call overwrites it."""
        if self.remaining <= 0:
            raise ValueError(f"the static cache is full: it holds {self.cache.max_len} tokens")
        self.remaining -= 1
        self.tokens.copy_(tokens)
        if self.graph is None:
            return self.step_fn(self.tokens, self.cache)
        self.graph.replay()
        return self.logits


def sample_next(logits: torch.Tensor, do_sample: bool = False, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """The next token [B] from logits [B, V], on the logits' device (no host synchronization):
    greedy, or sampling at `temperature` from the `top_k` most likely tokens and/or the smallest set
    whose probability reaches `top_p`."""
    if not do_sample:
        return logits.argmax(-1)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
    scores = logits.float() / temperature
    if top_k is not None and top_k > 0:
        kth = torch.topk(scores, min(top_k, scores.size(-1)), dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_scores, order = scores.sort(dim=-1, descending=True)
        cumulative = sorted_scores.softmax(-1).cumsum(-1)
        # drop a token when the tokens before it already reach top_p (the most likely always stays)
        drop_sorted = (cumulative - sorted_scores.softmax(-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    return torch.multinomial(scores.softmax(-1), 1, generator=generator)[:, 0]


@torch.no_grad()
def generate(model, input_ids: torch.Tensor, max_new_tokens: int, *, do_sample: bool = False,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             eos_token_id: int | list[int] | None = None, pad_token_id: int | None = None,
             stop_check=None, check_every: int = 32, generator: torch.Generator | None = None,
             use_graph: bool | None = None, segment_len: int | None = None) -> torch.Tensor:
    """Prompt [B, T] -> prompt and continuation [B, T + n], n <= max_new_tokens.

    The prompt is prefilled into a `StaticCache` sized to T + max_new_tokens, then each token is
    one replay of the captured step. Tokens after a sequence's end-of-sequence token become
    `pad_token_id` (or the EOS id). `stop_check(ids) -> bool` (all sequences done) is asked every
    `check_every` tokens: the only host synchronizations before the end.
    """
    if max_new_tokens < 1:
        return input_ids
    batch, prompt_len = input_ids.shape
    cache = model.allocate_static_cache(batch, prompt_len + max_new_tokens)
    logits = model.prefill_static(input_ids, cache, segment_len=segment_len)
    step = DecodeGraph(model, cache, use_graph=use_graph)
    out = input_ids.new_empty(batch, max_new_tokens)
    eos = torch.as_tensor([eos_token_id] if isinstance(eos_token_id, int) else (eos_token_id or []),
                          device=input_ids.device)
    done = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
    fill = pad_token_id if pad_token_id is not None else (int(eos[0]) if eos.numel() else 0)
    produced = max_new_tokens
    for i in range(max_new_tokens):
        token = sample_next(logits, do_sample, temperature, top_k, top_p, generator)
        if eos.numel():
            token = torch.where(done, torch.full_like(token, fill), token)
            done |= torch.isin(token, eos)
        out[:, i] = token
        if eos.numel() and (i + 1) % check_every == 0 and bool(done.all()):
            produced = i + 1
            break
        checkpoint = (i + 1) % check_every == 0
        if checkpoint and stop_check is not None and stop_check(torch.cat([input_ids, out[:, : i + 1]], 1)):
            produced = i + 1
            break
        if i + 1 < max_new_tokens:
            logits = step(token)
    return torch.cat([input_ids, out[:, :produced]], dim=1)
