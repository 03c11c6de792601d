"""Local copies of the lm-eval task data, their manifest, and task YAMLs that point at them.

Evaluation never downloads: lm-eval reads each task's rows from a jsonl file in the tasks
directory (default `resources/lmeval/`) through a task YAML that includes lm-eval's own
task definition and overrides only where the data comes from. The directory holds:

    manifest.json                            sha256, row count and origin of every file
    yaml/<task>.yaml                         task overrides (absolute paths; rewritten per run)
    lambada_openai_test.jsonl                {"text"}
    piqa_validation.jsonl                    {"goal", "sol1", "sol2", "label"}
    hellaswag_validation_preprocessed.jsonl  {"query", "choices", "gold"}  (already through
                                             lm-eval's hellaswag preprocessing, so the YAML
                                             turns that step off)
    winogrande_xl_validation.jsonl           {"sentence", "option1", "option2", "answer"}
    arc_easy_test.jsonl                      {"question", "choices": {"text", "label"}, "answerKey"}
    arc_challenge_test.jsonl                 {"question", "choices": {"text", "label"}, "answerKey"}
    wikitext_document_level_test.jsonl       {"page"}  (lm-eval's `wikitext`; made from wiki.test.raw)

`python -m gdn prepare-tasks` fills it, from the Hugging Face hub or from a folder of
files with those names (`--local-dir`); see docs/evaluation.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from gdn.data.prepare import sha256_file

MANIFEST = "manifest.json"
YAML_DIR = "yaml"
DEFAULT_TASKS = ("lambada_openai", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge")


@dataclass(frozen=True)
class HubSource:
    path: str
    name: str | None
    split: str


@dataclass(frozen=True)
class TaskData:
    task: str  # lm-eval task name
    file: str  # jsonl file name in the tasks directory
    split: str  # the split lm-eval evaluates ("validation" or "test")
    fields: tuple[str, ...]  # keys every row must have
    lm_eval_yaml: str  # lm-eval's task definition, relative to lm_eval/tasks/
    hub: HubSource | None  # where prepare-tasks fetches it (None: made locally)
    overrides: dict = field(default_factory=dict)  # further YAML keys for the local layout


TASKS: dict[str, TaskData] = {
    t.task: t
    for t in [
        TaskData(
            "lambada_openai",
            "lambada_openai_test.jsonl",
            "test",
            ("text",),
            "lambada/lambada_openai.yaml",
            HubSource("EleutherAI/lambada_openai", "default", "test"),
        ),
        TaskData(
            "piqa",
            "piqa_validation.jsonl",
            "validation",
            ("goal", "sol1", "sol2", "label"),
            "piqa/piqa.yaml",
            HubSource("baber/piqa", None, "validation"),
        ),
        TaskData(
            "hellaswag",
            "hellaswag_validation_preprocessed.jsonl",
            "validation",
            ("query", "choices", "gold"),
            "hellaswag/hellaswag.yaml",
            HubSource("Rowan/hellaswag", None, "validation"),
            # Rows are stored after lm-eval's own preprocessing (see prepare_tasks), which
            # turns `label` into `gold`; running it again would fail on the missing fields.
            overrides={"process_docs": None, "doc_to_target": "{{gold}}"},
        ),
        TaskData(
            "winogrande",
            "winogrande_xl_validation.jsonl",
            "validation",
            ("sentence", "option1", "option2", "answer"),
            "winogrande/default.yaml",
            HubSource("allenai/winogrande", "winogrande_xl", "validation"),
        ),
        TaskData(
            "arc_easy",
            "arc_easy_test.jsonl",
            "test",
            ("question", "choices", "answerKey"),
            "arc/arc_easy.yaml",
            HubSource("allenai/ai2_arc", "ARC-Easy", "test"),
        ),
        TaskData(
            "arc_challenge",
            "arc_challenge_test.jsonl",
            "test",
            ("question", "choices", "answerKey"),
            "arc/arc_challenge.yaml",
            HubSource("allenai/ai2_arc", "ARC-Challenge", "test"),
        ),
        TaskData(
            "wikitext",
            "wikitext_document_level_test.jsonl",
            "test",
            ("page",),
            "wikitext/wikitext.yaml",
            None,
        ),
    ]
}


class TaskDataError(RuntimeError):
    """A task file is missing, malformed or not the file the manifest names."""


def task_data(name: str) -> TaskData:
    if name not in TASKS:
        raise TaskDataError(
            f"no local data layout is defined for lm-eval task {name!r}; known tasks: {sorted(TASKS)} "
            "(add one to gdn/evaluate/tasks.py to evaluate another task offline)"
        )
    return TASKS[name]


def how_to_supply(spec: TaskData, tasks_dir: Path) -> str:
    fetch = (
        f"`python -m gdn prepare-tasks --tasks {spec.task} --out {tasks_dir}` (downloads {spec.hub.path})"
        if spec.hub
        else f"`python -m gdn prepare-tasks --tasks {spec.task} --wikitext-test wiki.test.raw --out {tasks_dir}`"
    )
    return (
        f"run {fetch}, or put your own copy named {spec.file} (one JSON object per line with keys "
        f"{list(spec.fields)}) in a folder and run `python -m gdn prepare-tasks --tasks {spec.task} "
        f"--local-dir FOLDER --out {tasks_dir}`; see docs/evaluation.md"
    )


def sha256_of(path: Path) -> str:
    return sha256_file(path)


def count_checked_rows(path: Path, spec: TaskData) -> int:
    """Rows in a task jsonl, after checking each is a JSON object with the task's keys."""
    n = 0
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise TaskDataError(
                    f"{path}:{line_no} is not valid JSON ({e}); each line must be one JSON object"
                ) from e
            missing = [k for k in spec.fields if not isinstance(row, dict) or k not in row]
            if missing:
                raise TaskDataError(f"{path}:{line_no} lacks {missing}; {spec.task} rows need keys {list(spec.fields)}")
            n += 1
    if n == 0:
        raise TaskDataError(f"{path} has no rows")
    return n


def read_manifest(tasks_dir: Path) -> dict:
    path = tasks_dir / MANIFEST
    if not path.exists():
        return {"files": {}}
    return json.loads(path.read_text())


def write_manifest(tasks_dir: Path, manifest: dict) -> None:
    (tasks_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def verify_task_files(tasks_dir: str | Path, task_names: list[str]) -> dict[str, dict]:
    """Checks every task's file against the manifest; returns their manifest entries."""
    tasks_dir = Path(tasks_dir).resolve()
    manifest = read_manifest(tasks_dir)["files"]
    entries = {}
    for name in task_names:
        spec = task_data(name)
        path = tasks_dir / spec.file
        if not path.exists():
            raise TaskDataError(f"{path} is missing (data for lm-eval task {name!r}): {how_to_supply(spec, tasks_dir)}")
        entry = manifest.get(spec.file)
        if entry is None:
            raise TaskDataError(
                f"{path} is not listed in {tasks_dir / MANIFEST}, so its checksum cannot be checked: "
                + how_to_supply(spec, tasks_dir)
            )
        actual = sha256_of(path)
        if actual != entry["sha256"]:
            raise TaskDataError(
                f"{path} has sha256 {actual}, but {tasks_dir / MANIFEST} records {entry['sha256']}: the file changed "
                f"after it was prepared; {how_to_supply(spec, tasks_dir)}"
            )
        entries[name] = entry
    return entries


def lm_eval_tasks_root() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


def task_yaml(spec: TaskData, tasks_dir: Path) -> dict:
    """lm-eval's own task definition, re-pointed at the local jsonl file.

    Everything else (prompts, metrics, preprocessing functions) comes from the `include`d
    lm-eval YAML, so the task is scored exactly as lm-eval defines it.
    """
    config = {
        "include": str(lm_eval_tasks_root() / spec.lm_eval_yaml),
        "task": spec.task,
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {spec.split: str((tasks_dir / spec.file).resolve())}},
        # Only one split is stored: zero-shot evaluation needs no training/few-shot docs.
        "training_split": None,
        "validation_split": spec.split if spec.split == "validation" else None,
        "test_split": spec.split if spec.split == "test" else None,
        "fewshot_split": None,
    }
    config.update(spec.overrides)
    return config


def write_task_yamls(tasks_dir: str | Path, task_names: list[str], yaml_dir: str | Path) -> Path:
    """Writes one YAML per task into `yaml_dir` (give it to TaskManager's include_path)."""
    tasks_dir, yaml_dir = Path(tasks_dir).resolve(), Path(yaml_dir)
    yaml_dir.mkdir(parents=True, exist_ok=True)
    for name in task_names:
        spec = task_data(name)
        text = yaml.safe_dump(task_yaml(spec, tasks_dir), sort_keys=False)
        (yaml_dir / f"{spec.task}.yaml").write_text(text)
    return yaml_dir
