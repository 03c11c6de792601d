"""lm-evaluation-harness integration: our models as an lm-eval `LM`, and a task runner.

`GDNHarnessLM` implements lm-eval's three request types on top of `CausalScorer`:
loglikelihood (batched, via lm-eval's `TemplateLM` tokenization of context/continuation),
loglikelihood_rolling (lm-eval's disjoint rolling windows) and generate_until (greedy,
through the models' own `prefill`/`decode_step`, i.e. the recurrent state for GDN; HFLM
would go through `generate` instead). Importing this module registers it as lm-eval model
"gdn_repro" (model_args: pretrained=RUN/model,max_length=...,batch_size=...,device=...).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

from gdn.evaluate.scoring import CausalScorer, load_model_and_tokenizer, resolve_device

DEFAULT_MAX_GEN_TOKS = 256
log = logging.getLogger(__name__)


@register_model("gdn_repro")
class GDNHarnessLM(TemplateLM):
    def __init__(
        self,
        scorer: CausalScorer | None = None,
        *,
        pretrained: str | None = None,
        max_length: int = 2048,
        batch_size: int = 8,
        device: str = "auto",
        max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
    ):
        super().__init__()
        if scorer is None:
            if pretrained is None:
                raise ValueError("GDNHarnessLM needs a scorer or pretrained=<saved model dir>")
            torch_device = resolve_device(device)
            model, tokenizer = load_model_and_tokenizer(pretrained, torch_device)
            scorer = CausalScorer(model, tokenizer, torch_device, int(max_length), int(batch_size))
        self.scorer = scorer
        self.tokenizer = scorer.tokenizer
        self.max_gen_toks = int(max_gen_toks)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        from lm_eval.utils import simple_parse_args_string

        args = simple_parse_args_string(arg_string)
        extra = {k: v for k, v in (additional_config or {}).items() if k in ("batch_size", "device") and v is not None}
        return cls(**{**args, **extra})

    # -- what TemplateLM needs ---------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.scorer.eos_id

    @property
    def max_length(self) -> int:
        return self.scorer.max_length

    @property
    def device(self):
        return self.scorer.device

    @property
    def tokenizer_name(self) -> str:
        return getattr(self.tokenizer, "name_or_path", "gdn_repro").replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        # The tokenizers here add no special tokens; documents are separated by EOS, which
        # lm-eval supplies as `prefix_token_id` where a text has no context.
        return self.scorer.encode(string)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        scores = self.scorer.score_pairs([(context, continuation) for _, context, continuation in requests])
        return [(s.logprob, s.is_greedy) for s in scores]

    # -- request types -----------------------------------------------------------------
    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        tokens = [self.tok_encode(req.args[0]) for req in requests]
        return self.scorer.rolling_loglikelihoods(tokens, stride=None)

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        # Requests sharing generation settings run together; greedy decoding only, as in
        # the zero-shot evaluations of the GDN and Mamba papers. Besides the `until`
        # strings, generation stops at the end-of-text token (see CausalScorer).
        groups: dict[int, list[int]] = {}
        settings = []
        for i, req in enumerate(requests):
            context, gen_kwargs = req.args
            gen_kwargs = dict(gen_kwargs or {})
            until = gen_kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(gen_kwargs.pop("max_gen_toks", self.max_gen_toks))
            if gen_kwargs.get("do_sample") or float(gen_kwargs.get("temperature") or 0) > 0:
                log.warning("%s asks for sampling (%s); decoding greedily instead", req.task_name, gen_kwargs)
            settings.append((self.tok_encode(context), until))
            groups.setdefault(max_new, []).append(i)
        outputs: list[str] = [""] * len(requests)
        for max_new, indices in groups.items():
            texts = self.scorer.generate_greedy(
                [settings[i][0] for i in indices], max_new, [settings[i][1] for i in indices]
            )
            for i, text in zip(indices, texts, strict=True):
                outputs[i] = text
        return outputs


def result_rows(results: dict, task_names: list[str]) -> list[dict]:
    """Flattens lm-eval's results into {"task", "metric", "value", "stderr"} rows.

    lm-eval keys metrics as "<metric>,<filter>"; the default filter "none" is dropped from
    the name, any other filter is kept ("exact_match,strict-match").
    """
    rows = []
    for task in task_names:
        metrics = results["results"].get(task, {})
        for key, value in metrics.items():
            if "," not in key or "_stderr," in key or not isinstance(value, (int, float)):
                continue
            metric, filter_name = key.split(",", 1)
            stderr = metrics.get(f"{metric}_stderr,{filter_name}")
            rows.append(
                {
                    "task": task,
                    "metric": metric if filter_name == "none" else key,
                    "value": float(value),
                    "stderr": float(stderr) if isinstance(stderr, (int, float)) else None,
                }
            )
    return rows


def run_tasks(
    lm: GDNHarnessLM,
    tasks_dir: str | Path,
    task_names: list[str],
    *,
    limit: int | float | None = None,
    num_fewshot: int = 0,
    bootstrap_iters: int = 1000,
    seed: int = 1234,
) -> tuple[list[dict], dict]:
    """Evaluates `task_names` from the local task data in `tasks_dir`; no network access.

    Returns (result rows, details: per-task sample counts and task versions).
    """
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from gdn.evaluate.tasks import write_task_yamls

    if not task_names:
        return [], {"samples": {}, "task_versions": {}}
    # YAMLs go to a private folder: they hold absolute paths, and other runs may be
    # reading the tasks directory at the same time.
    with tempfile.TemporaryDirectory(prefix="gdn-lmeval-tasks-") as yaml_dir:
        write_task_yamls(tasks_dir, task_names, yaml_dir)
        manager = TaskManager(include_defaults=False, include_path=yaml_dir)
        results = simple_evaluate(
            model=lm,
            tasks=list(task_names),
            num_fewshot=num_fewshot,
            limit=limit,
            bootstrap_iters=bootstrap_iters,
            task_manager=manager,
            log_samples=False,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
    details = {
        "samples": {t: results.get("n-samples", {}).get(t, {}).get("effective") for t in task_names},
        "task_versions": {t: results.get("versions", {}).get(t) for t in task_names},
    }
    return result_rows(results, task_names), details
