"""`python -m gdn prepare-tasks`: fill the lm-eval task directory for offline evaluation.

The only evaluation step that may touch the network. For each task it writes the local
jsonl file (layouts in gdn/evaluate/tasks.py and docs/evaluation.md), records its sha256,
row count and origin in manifest.json, and writes the task YAMLs under yaml/.

Sources, per task:
  * default: the dataset lm-eval 0.4.13 uses, fetched with `datasets` at the revision given
    by --revision TASK=REV (default: the hub's current main, resolved to a commit sha
    first, so the manifest records exactly what was fetched);
  * --local-dir DIR: files with the expected names copied from DIR (no network), checked
    against --manifest when one is given (a manifest.json written by this command, or a
    `sha256sum` listing such as SHA256SUMS);
  * the `wikitext` task (lm-eval's document-level WikiText): built from the raw test file
    given with --wikitext-test.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from gdn.evaluate.tasks import (
    DEFAULT_TASKS,
    MANIFEST,
    YAML_DIR,
    TaskData,
    TaskDataError,
    count_checked_rows,
    read_manifest,
    sha256_of,
    task_data,
    write_manifest,
    write_task_yamls,
)


def add_arguments(parser) -> None:
    parser.add_argument(
        "--tasks",
        nargs="*",
        default=list(DEFAULT_TASKS),
        help=f"lm-eval task names (default: {' '.join(DEFAULT_TASKS)})",
    )
    parser.add_argument("--out", required=True, help="the tasks directory to fill, e.g. resources/lmeval")
    parser.add_argument(
        "--local-dir",
        default=None,
        help="copy task files from this folder instead of downloading (names as in docs/evaluation.md)",
    )
    parser.add_argument(
        "--manifest",
        default=None,
        help="with --local-dir: expected checksums (manifest.json from this command, or sha256sum output)",
    )
    parser.add_argument(
        "--wikitext-test", default=None, help="raw WikiText test file (wiki.test.raw), needed for the `wikitext` task"
    )
    parser.add_argument(
        "--revision",
        action="append",
        default=[],
        metavar="TASK=REV",
        help="hub revision to fetch for a task (repeatable); default: the current main, recorded by sha",
    )


def parse_revisions(items: list[str]) -> dict[str, str]:
    revisions = {}
    for item in items:
        task, sep, rev = item.partition("=")
        if not sep or not task or not rev:
            raise SystemExit(f"--revision expects TASK=REV, got {item!r}")
        revisions[task] = rev
    return revisions


def expected_checksums(manifest_path: Path) -> dict[str, str]:
    """File name -> sha256, from our manifest.json or from `sha256sum` output lines."""
    text = manifest_path.read_text()
    if manifest_path.suffix == ".json":
        return {name: entry["sha256"] for name, entry in json.loads(text)["files"].items()}
    sums = {}
    for line in text.splitlines():
        if line.strip():
            digest, _, name = line.strip().partition(" ")
            sums[Path(name.strip().lstrip("*")).name] = digest.lower()
    return sums


def copy_local(spec: TaskData, local_dir: Path, out: Path, checksums: dict[str, str] | None) -> dict:
    source = local_dir / spec.file
    if not source.exists():
        raise TaskDataError(
            f"{source} is missing: --local-dir must hold {spec.file} for lm-eval task {spec.task!r} "
            f"(one JSON object per line with keys {list(spec.fields)}; see docs/evaluation.md)"
        )
    digest = sha256_of(source)
    if checksums is not None:
        if spec.file not in checksums:
            raise TaskDataError(
                f"the --manifest given lists no checksum for {spec.file}; add it or leave --manifest out"
            )
        if checksums[spec.file] != digest:
            raise TaskDataError(
                f"{source} has sha256 {digest}, but the --manifest given expects {checksums[spec.file]}: "
                "this is not the file the manifest describes; supply the right file or manifest"
            )
    rows = count_checked_rows(source, spec)
    if source.resolve() != (out / spec.file).resolve():
        shutil.copyfile(source, out / spec.file)
    return {"task": spec.task, "sha256": digest, "rows": rows, "source": {"local_file": str(source.resolve())}}


def fetch_from_hub(spec: TaskData, out: Path, revision: str | None) -> dict:
    import datasets
    from huggingface_hub import HfApi

    hub = spec.hub
    # Resolve the revision to a commit first, so what is recorded is what was fetched.
    sha = HfApi().dataset_info(hub.path, revision=revision or "main").sha
    dataset = datasets.load_dataset(hub.path, hub.name, split=hub.split, revision=sha)
    if spec.task == "hellaswag":
        # Store rows after lm-eval's own preprocessing (query/choices/gold), the same
        # layout as a hand-supplied preprocessed file; the task YAML then skips it.
        from lm_eval.tasks.hellaswag.utils import process_docs

        dataset = process_docs(dataset).select_columns(list(spec.fields))
    path = out / spec.file
    dataset.to_json(str(path), lines=True, force_ascii=False)
    return {
        "task": spec.task,
        "sha256": sha256_of(path),
        "rows": count_checked_rows(path, spec),
        "source": {
            "dataset": hub.path,
            "name": hub.name,
            "split": hub.split,
            "revision": sha,
            "datasets_version": datasets.__version__,
        },
    }


def build_wikitext_documents(spec: TaskData, raw_path: Path, out: Path) -> dict:
    from gdn.evaluate.wikitext import read_test_text, split_pages

    path = out / spec.file
    with open(path, "w", encoding="utf-8") as f:
        for page in split_pages(read_test_text(raw_path)):
            f.write(json.dumps({"page": page}, ensure_ascii=False) + "\n")
    return {
        "task": spec.task,
        "sha256": sha256_of(path),
        "rows": count_checked_rows(path, spec),
        "source": {
            "raw_test_file": str(raw_path.resolve()),
            "raw_sha256": sha256_of(raw_path),
            "pages": "split at top-level ' = Title = ' lines, as EleutherAI/wikitext_document_level",
        },
    }


def prepare(
    tasks: list[str],
    out: str | Path,
    local_dir: str | Path | None = None,
    manifest: str | Path | None = None,
    wikitext_test: str | Path | None = None,
    revisions: dict[str, str] | None = None,
) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    specs = [task_data(t) for t in tasks]  # unknown names fail before anything is written
    checksums = expected_checksums(Path(manifest)) if manifest else None
    if checksums is not None and local_dir is None:
        raise TaskDataError("--manifest checks files copied with --local-dir; give --local-dir too")
    recorded = read_manifest(out)
    for spec in specs:
        if spec.task == "wikitext" and wikitext_test is not None:
            entry = build_wikitext_documents(spec, Path(wikitext_test), out)
        elif local_dir is not None:
            entry = copy_local(spec, Path(local_dir), out, checksums)
        elif spec.hub is None:
            raise TaskDataError(
                f"{spec.file} for `{spec.task}` is made from the raw WikiText test file: "
                "pass --wikitext-test wiki.test.raw"
            )
        else:
            entry = fetch_from_hub(spec, out, (revisions or {}).get(spec.task))
        recorded["files"][spec.file] = entry
        write_manifest(out, recorded)  # after each file, so a failure keeps what was done
        print(f"{spec.task}: {out / spec.file} ({entry['rows']} rows, sha256 {entry['sha256'][:12]}…)")
    write_manifest(out, recorded)  # also when no task is asked for: the workflow waits for it
    write_task_yamls(out, tasks, out / YAML_DIR)
    print(f"wrote {out / MANIFEST} and task YAMLs in {out / YAML_DIR}")
    return recorded


def run(args) -> int:
    try:
        prepare(args.tasks, args.out, args.local_dir, args.manifest, args.wikitext_test, parse_revisions(args.revision))
    except TaskDataError as e:
        raise SystemExit(f"prepare-tasks: {e}") from e
    return 0
