"""`python -m gdn evaluate`: WikiText-103 perplexities and lm-eval zero-shot tasks for one run.

Reads RUN/metrics.json; a run that did not complete gets {"status": "skipped"} outputs and
exit code 0, so a workflow over a whole grid goes on. A completed run's RUN/model is
evaluated into OUT/wikitext.json and OUT/lm_eval.json, each

    {"kind": "evaluation", "status": "completed", "model_dir", "device", "wall_s",
     "versions": {...}, "settings": {...},
     "results": [{"task", "metric", "value", "stderr"}, ...]}

`--config-json` is the tier config's `evaluate` section (keys and defaults in DEFAULTS).
Evaluation reads only local files: lm-eval task data comes from --tasks-dir, filled
beforehand by `python -m gdn prepare-tasks`.
"""

from __future__ import annotations

import copy
import json
import platform
import time
from pathlib import Path

from gdn.checkpoint import write_json_atomic
from gdn.evaluate.tasks import DEFAULT_TASKS

DEFAULTS = {
    "context": None,  # tokens per window (perplexities, lm-eval max_length); null: the run's train.seq_len
    "batch_size": 8,  # windows / requests per forward pass
    "threads": None,  # CPU threads for torch (null: torch's default)
    "widths": "all",  # which widths the workflow evaluates: "all" or a list (not used here)
    "wikitext": {
        "stride": None,  # token perplexity: null = disjoint windows; k < context = sliding by k
        "max_pages": None,  # score only the first N pages of the test file (a smoke test); null = all 62
    },
    "lm_eval": {
        "tasks": list(DEFAULT_TASKS),
        "limit": None,  # examples per task (int) or fraction (float); null = all
        "num_fewshot": 0,
        "bootstrap_iters": 1000,  # resamples for the stderr of non-mean metrics (lambada perplexity); 0 = none
        "max_gen_toks": 256,  # generation tasks without their own max_gen_toks
        "seed": 1234,
    },
}

OUTPUT_FILES = ("wikitext.json", "lm_eval.json")


def add_arguments(parser) -> None:
    parser.add_argument("--run-dir", required=True, help="a training run folder (metrics.json, model/)")
    parser.add_argument("--wikitext-test", required=True, help="the raw WikiText test file (wiki.test.raw)")
    parser.add_argument("--tasks-dir", required=True, help="local lm-eval task data from `prepare-tasks`")
    parser.add_argument("--config-json", default="{}", help="JSON of the tier config's `evaluate` section")
    parser.add_argument("--out", required=True, help="output folder, e.g. RUN/eval")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])


def merge_settings(overrides: dict, defaults: dict = DEFAULTS, where: str = "evaluate") -> dict:
    """DEFAULTS updated by the config; an unknown key is an error (it is likely a typo)."""
    merged = copy.deepcopy(defaults)
    for key, value in (overrides or {}).items():
        if key not in defaults:
            raise ValueError(f"unknown config key {where}.{key}; known keys: {sorted(defaults)}")
        if isinstance(defaults[key], dict):
            if not isinstance(value, dict):
                raise ValueError(f"config key {where}.{key} must be a mapping, got {value!r}")
            merged[key] = merge_settings(value, defaults[key], f"{where}.{key}")
        else:
            merged[key] = value
    return merged


def check_settings(settings: dict) -> None:
    context, stride = settings["context"], settings["wikitext"]["stride"]
    if context is not None and not (isinstance(context, int) and context >= 2):
        raise ValueError(f"evaluate.context must be null or an integer >= 2, got {context!r}")
    if stride is not None and not (isinstance(stride, int) and stride >= 1 and (context is None or stride <= context)):
        raise ValueError(
            f"evaluate.wikitext.stride must be null or an integer in [1, context={context}], got {stride!r}"
        )
    threads = settings["threads"]
    if threads is not None and not (isinstance(threads, int) and threads >= 1):
        raise ValueError(f"evaluate.threads must be null or a positive integer, got {threads!r}")
    widths = settings["widths"]
    if widths != "all" and not (isinstance(widths, list) and all(isinstance(w, int) for w in widths)):
        raise ValueError(f'evaluate.widths must be "all" or a list of integers, got {widths!r}')
    tasks = settings["lm_eval"]["tasks"]
    if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
        raise ValueError(f"evaluate.lm_eval.tasks must be a list of lm-eval task names, got {tasks!r}")


def versions() -> dict:
    from importlib.metadata import version

    found = {"python": platform.python_version()}
    for package in ("torch", "transformers", "lm_eval", "datasets", "tokenizers"):
        found[package] = version(package.replace("_", "-"))
    return found


def write_json(path: Path, payload: dict) -> None:
    write_json_atomic(path, payload)  # readers never see a half-written file


def write_skipped(out: Path, run_dir: Path, reason: str) -> None:
    for name in OUTPUT_FILES:
        write_json(
            out / name,
            {
                "kind": "evaluation",
                "status": "skipped",
                "reason": reason,
                "model_dir": str(run_dir / "model"),
                "results": [],
            },
        )


def read_metrics(run_dir: Path) -> dict:
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.exists():
        raise FileNotFoundError(f"{metrics_path} is missing: train the run before evaluating it")
    return json.loads(metrics_path.read_text())


def context_length(settings: dict, metrics: dict, run_dir: Path) -> int:
    """evaluate.context, or the sequence length the run was trained at."""
    if settings["context"] is not None:
        return settings["context"]
    seq_len = ((metrics.get("config") or {}).get("train") or {}).get("seq_len")
    if not isinstance(seq_len, int):
        raise ValueError(
            f"evaluate.context is null and {run_dir / 'metrics.json'} records no config.train.seq_len; "
            "set evaluate.context to the window length to evaluate at"
        )
    if settings["wikitext"]["stride"] is not None and settings["wikitext"]["stride"] > seq_len:
        raise ValueError(f"evaluate.wikitext.stride exceeds the context length {seq_len} (the run's train.seq_len)")
    return seq_len


def evaluate_run(run_dir, wikitext_test, tasks_dir, config: dict, out, device: str = "auto") -> dict[str, dict]:
    from gdn import devices
    from gdn.evaluate.harness import GDNHarnessLM, run_tasks
    from gdn.evaluate.scoring import CausalScorer, load_model_and_tokenizer
    from gdn.evaluate.tasks import sha256_of, verify_task_files
    from gdn.evaluate.wikitext import evaluate_wikitext

    run_dir, out = Path(run_dir), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = merge_settings(config)
    check_settings(settings)
    metrics = read_metrics(run_dir)
    status = metrics.get("status", "missing")
    if status != "completed":
        write_skipped(out, run_dir, f"training status is {status!r}, not 'completed'")
        return {}
    context = context_length(settings, metrics, run_dir)
    lm_settings = settings["lm_eval"]
    # Check the task data before spending time on the model.
    task_files = verify_task_files(tasks_dir, lm_settings["tasks"])

    if settings["threads"] is not None:
        import torch

        torch.set_num_threads(settings["threads"])
    torch_device, _slot = devices.resolve(device, devices.jobs_per_gpu_from_env())  # slot held until return
    model_dir = run_dir / "model"
    model, tokenizer = load_model_and_tokenizer(model_dir, torch_device)
    scorer = CausalScorer(model, tokenizer, torch_device, context, settings["batch_size"])
    common = {
        "kind": "evaluation",
        "status": "completed",
        "model_dir": str(model_dir),
        "device": str(torch_device),
        "versions": versions(),
    }

    start = time.perf_counter()
    wikitext_rows = evaluate_wikitext(scorer, wikitext_test, settings["wikitext"]["stride"],
                                      settings["wikitext"]["max_pages"])
    wikitext = {
        **common,
        "wall_s": time.perf_counter() - start,
        "settings": {
            "context": context,
            "stride": settings["wikitext"]["stride"],
            "max_pages": settings["wikitext"]["max_pages"],
            "batch_size": settings["batch_size"],
            "threads": settings["threads"],
            "test_file": str(Path(wikitext_test).resolve()),
            "test_file_sha256": sha256_of(Path(wikitext_test)),
        },
        "results": wikitext_rows,
    }
    write_json(out / "wikitext.json", wikitext)

    start = time.perf_counter()
    lm = GDNHarnessLM(scorer, max_gen_toks=lm_settings["max_gen_toks"])
    rows, details = run_tasks(
        lm,
        tasks_dir,
        lm_settings["tasks"],
        limit=lm_settings["limit"],
        num_fewshot=lm_settings["num_fewshot"],
        bootstrap_iters=lm_settings["bootstrap_iters"],
        seed=lm_settings["seed"],
    )
    lm_eval = {
        **common,
        "wall_s": time.perf_counter() - start,
        "settings": {
            **lm_settings,
            "context": context,
            "batch_size": settings["batch_size"],
            "tasks_dir": str(Path(tasks_dir).resolve()),
            "task_files": {t: {"sha256": e["sha256"], "rows": e["rows"]} for t, e in task_files.items()},
            **details,
        },
        "results": rows,
    }
    write_json(out / "lm_eval.json", lm_eval)
    return {"wikitext": wikitext, "lm_eval": lm_eval}


def run(args) -> int:
    from gdn.evaluate.tasks import TaskDataError

    try:
        config = json.loads(args.config_json)
    except json.JSONDecodeError as e:
        raise SystemExit(f"--config-json is not valid JSON: {e}") from e
    try:
        evaluate_run(args.run_dir, args.wikitext_test, args.tasks_dir, config, args.out, args.device)
    except (TaskDataError, ValueError, FileNotFoundError) as e:
        raise SystemExit(f"evaluate: {e}") from e
    return 0
