"""Batched log-likelihood scoring and greedy generation with a trained model.

Both the WikiText perplexities and the lm-eval adapter go through `CausalScorer`, so the
two compute log-likelihoods the same way. Windowing follows lm-eval's rolling
log-likelihood (`lm_eval.utils.get_rolling_token_windows`): the first token of a text is
predicted from the end-of-text token, as in training, where documents are joined by it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from gdn.models import generation

EOS_TOKEN = "<|endoftext|>"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but torch sees no CUDA device; use --device cpu or auto")
    return torch.device(name)


def load_model_and_tokenizer(model_dir: str | Path, device: torch.device):
    """A saved run's model (float32, eval mode, on `device`) and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import gdn.models  # noqa: F401  (registers the model families with the Auto classes)

    model_dir = Path(model_dir)
    for name in ("config.json", "tokenizer.json"):
        if not (model_dir / name).exists():
            raise FileNotFoundError(f"{model_dir / name} is missing: {model_dir} is not a complete saved model")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return model, tokenizer


def eos_token_id(tokenizer) -> int:
    if tokenizer.eos_token_id is not None:
        return int(tokenizer.eos_token_id)
    token_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer has no eos token and no {EOS_TOKEN!r} in its vocabulary")
    return int(token_id)


@dataclass
class Score:
    logprob: float  # summed log-probability of the continuation tokens
    is_greedy: bool  # every continuation token was the argmax
    n_tokens: int


class CausalScorer:
    def __init__(self, model, tokenizer, device: torch.device, max_length: int, batch_size: int):
        if max_length < 2:
            raise ValueError(f"the context length must be at least 2 tokens, got {max_length}")
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.max_length = int(max_length)
        self.batch_size = max(1, int(batch_size))
        self.eos_id = eos_token_id(tokenizer)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    # -- scoring -----------------------------------------------------------------------
    def score_pairs(self, pairs: list[tuple[list[int], list[int]]]) -> list[Score]:
        """Log-likelihood of each continuation given its context (token lists).

        The model sees the last `max_length` tokens of context+continuation, as lm-eval's
        HF backend does. A continuation longer than the window is scored in consecutive
        pieces of `max_length` tokens, each piece conditioned on what precedes it within
        its window (as in rolling log-likelihood), instead of failing or being cut short.
        """
        pieces, owner = [], []
        for k, (context, continuation) in enumerate(pairs):
            if not context or not continuation:
                raise ValueError(
                    "scoring needs at least one context token (e.g. end-of-text) and one continuation token"
                )
            tokens = list(context) + list(continuation)
            for offset in range(0, len(continuation), self.max_length):
                start = len(context) + offset
                pieces.append(
                    (tokens[max(0, start - self.max_length) : start], tokens[start : start + self.max_length])
                )
                owner.append(k)
        totals = [Score(logprob=0.0, is_greedy=True, n_tokens=0) for _ in pairs]
        for k, piece in zip(owner, self._score_windows(pieces), strict=True):
            total = totals[k]
            totals[k] = Score(
                total.logprob + piece.logprob, total.is_greedy and piece.is_greedy, total.n_tokens + piece.n_tokens
            )
        return totals

    def _score_windows(self, pairs: list[tuple[list[int], list[int]]]) -> list[Score]:
        """score_pairs for continuations of at most `max_length` tokens, batched. Rows are
        right-padded: the models are causal, so padding after a row's last token cannot
        change that row's logits."""
        inputs = []
        for context, continuation in pairs:
            whole = (list(context) + list(continuation))[-(self.max_length + 1) :]
            inputs.append((whole[:-1], whole[len(whole) - len(continuation) :]))
        order = sorted(range(len(inputs)), key=lambda i: -len(inputs[i][0]))
        results: list[Score | None] = [None] * len(inputs)
        for start in range(0, len(order), self.batch_size):
            batch = [order[k] for k in range(start, min(start + self.batch_size, len(order)))]
            width = max(len(inputs[i][0]) for i in batch)
            ids = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, : len(inputs[i][0])] = torch.tensor(inputs[i][0])
            with torch.no_grad():
                logits = self.model(ids.to(self.device)).logits
            for row, i in enumerate(batch):
                inp, target = inputs[i]
                n = len(target)
                scored = F.log_softmax(logits[row, len(inp) - n : len(inp)].float(), dim=-1)
                target_t = torch.tensor(target, device=scored.device)
                logprob = scored.gather(1, target_t[:, None]).sum().item()
                greedy = bool((scored.argmax(-1) == target_t).all().item())
                results[i] = Score(logprob=logprob, is_greedy=greedy, n_tokens=n)
        return results  # type: ignore[return-value]

    def rolling_windows(self, tokens: list[int], stride: int | None = None) -> list[tuple[list[int], list[int]]]:
        """(context, continuation) windows that together predict every token once.

        stride None (or the context length): disjoint windows, lm-eval's
        `loglikelihood_rolling`. A smaller stride slides the window, predicting `stride`
        new tokens per window with up to `max_length - stride` tokens of extra context.
        """
        stride = self.max_length if stride is None else int(stride)
        if not 1 <= stride <= self.max_length:
            raise ValueError(f"stride must be between 1 and the context length {self.max_length}, got {stride}")
        windows = get_rolling_token_windows(
            token_list=tokens,
            prefix_token=self.eos_id,
            max_seq_len=self.max_length,
            context_len=self.max_length - stride + 1,
        )
        return [make_disjoint_window(w) for w in windows]

    def rolling_loglikelihoods(self, texts_tokens: list[list[int]], stride: int | None = None) -> list[float]:
        """Summed log-likelihood of each token list, all windows scored in shared batches."""
        pairs, owner = [], []
        for k, tokens in enumerate(texts_tokens):
            for window in self.rolling_windows(tokens, stride):
                pairs.append(window)
                owner.append(k)
        totals = [0.0] * len(texts_tokens)
        for k, score in zip(owner, self.score_pairs(pairs), strict=True):
            totals[k] += score.logprob
        return totals

    # -- generation --------------------------------------------------------------------
    def generate_greedy(
        self, contexts: list[list[int]], max_new_tokens: int, stop_strings: list[list[str]]
    ) -> list[str]:
        """Greedy continuations through the models' static-cache decoding (recurrent state for
        GDN, KV cache for the Transformer). Prompts of equal length share a batch, since
        the models take no padding mask. Each text is cut at its first stop string."""
        # Like lm-eval's HF backend, leave room in the window for the generated tokens, but
        # keep at least half the window for the prompt when the generation budget is larger.
        keep = max(self.max_length - max_new_tokens, self.max_length // 2)
        contexts = [list(c)[-keep:] if c else [self.eos_id] for c in contexts]
        order = sorted(range(len(contexts)), key=lambda i: len(contexts[i]))
        outputs: list[str] = [""] * len(contexts)
        k = 0
        while k < len(order):
            length = len(contexts[order[k]])
            batch = [order[k]]
            while (
                k + len(batch) < len(order)
                and len(batch) < self.batch_size
                and len(contexts[order[k + len(batch)]]) == length
            ):
                batch.append(order[k + len(batch)])
            k += len(batch)
            texts = self._generate_batch([contexts[i] for i in batch], max_new_tokens, [stop_strings[i] for i in batch])
            for i, text in zip(batch, texts, strict=True):
                outputs[i] = text
        return outputs

    def _generate_batch(self, prompts: list[list[int]], max_new_tokens: int, stops: list[list[str]]) -> list[str]:
        """One batch of equal-length prompts on the models' fast path (static cache, CUDA graph on
        a GPU: gdn.models.generation); stop strings are checked every 16 tokens and cut afterwards."""
        ids = torch.tensor(prompts, dtype=torch.long, device=self.device)

        def continuation(row) -> list[int]:
            tokens = row[ids.shape[1]:].tolist()
            return tokens[: tokens.index(self.eos_id)] if self.eos_id in tokens else tokens

        def all_stopped(sequences) -> bool:
            return all(self.eos_id in row[ids.shape[1]:].tolist()
                       or any(s and s in self.decode(continuation(row)) for s in stop)
                       for row, stop in zip(sequences, stops, strict=True))

        out = generation.generate(self.model, ids, max_new_tokens, eos_token_id=self.eos_id,
                                  pad_token_id=self.eos_id, stop_check=all_stopped, check_every=16)
        return [cut_at_stop(self.decode(continuation(row)), s) for row, s in zip(out, stops, strict=True)]


def cut_at_stop(text: str, stops: list[str]) -> str:
    for stop in stops:
        if stop:
            text = text.split(stop)[0]
    return text
