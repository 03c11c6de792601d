"""Task data preparation and checking, and the evaluate command's skipped-run path.

No model and no network: only small generated files.
"""

import json
import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

from gdn.evaluate.prepare_tasks import prepare  # noqa: E402
from gdn.evaluate.tasks import TaskDataError, sha256_of, verify_task_files, write_task_yamls  # noqa: E402

PIQA_ROW = {"goal": "Open a jar", "sol1": "Twist the lid", "sol2": "Eat the lid", "label": 0}


@pytest.fixture
def local_piqa(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "piqa_validation.jsonl").write_text(json.dumps(PIQA_ROW) + "\n")
    return folder


def test_local_copy_is_recorded_and_verified(local_piqa, tmp_path):
    out = tmp_path / "lmeval"
    prepare(["piqa"], out, local_dir=local_piqa)
    manifest = json.loads((out / "manifest.json").read_text())["files"]["piqa_validation.jsonl"]
    assert manifest["sha256"] == sha256_of(local_piqa / "piqa_validation.jsonl") and manifest["rows"] == 1
    assert (out / "yaml" / "piqa.yaml").exists()
    assert verify_task_files(out, ["piqa"])["piqa"]["rows"] == 1


def test_missing_local_file_names_the_file_and_the_fix(local_piqa, tmp_path):
    with pytest.raises(TaskDataError, match=r"hellaswag_validation_preprocessed\.jsonl is missing.*query"):
        prepare(["piqa", "hellaswag"], tmp_path / "lmeval", local_dir=local_piqa)


def test_checksum_mismatch_against_a_given_manifest(local_piqa, tmp_path):
    sums = tmp_path / "SHA256SUMS"
    sums.write_text(f"{'0' * 64}  ./lmeval/piqa_validation.jsonl\n")
    with pytest.raises(TaskDataError, match=r"piqa_validation\.jsonl has sha256 .* expects 0000"):
        prepare(["piqa"], tmp_path / "lmeval", local_dir=local_piqa, manifest=sums)
    sums.write_text(f"{sha256_of(local_piqa / 'piqa_validation.jsonl')}  ./lmeval/piqa_validation.jsonl\n")
    prepare(["piqa"], tmp_path / "lmeval", local_dir=local_piqa, manifest=sums)


def test_rows_without_the_task_fields_are_rejected(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "piqa_validation.jsonl").write_text(json.dumps({"goal": "x"}) + "\n")
    with pytest.raises(TaskDataError, match=r"piqa_validation\.jsonl:1 lacks \['sol1', 'sol2', 'label'\]"):
        prepare(["piqa"], tmp_path / "lmeval", local_dir=folder)


def test_evaluation_refuses_missing_or_changed_task_files(local_piqa, tmp_path):
    out = tmp_path / "lmeval"
    with pytest.raises(TaskDataError, match=r"piqa_validation\.jsonl is missing.*prepare-tasks --tasks piqa"):
        verify_task_files(out, ["piqa"])
    prepare(["piqa"], out, local_dir=local_piqa)
    with open(out / "piqa_validation.jsonl", "a") as f:
        f.write(json.dumps(PIQA_ROW) + "\n")
    with pytest.raises(TaskDataError, match=r"piqa_validation\.jsonl has sha256 .* changed after it was prepared"):
        verify_task_files(out, ["piqa"])


def test_unknown_task_is_named(tmp_path):
    with pytest.raises(TaskDataError, match=r"no local data layout .* 'mmlu'"):
        prepare(["mmlu"], tmp_path / "lmeval", local_dir=tmp_path)


def test_task_yaml_points_lm_eval_at_the_local_file(tmp_path):
    import yaml

    write_task_yamls(tmp_path, ["hellaswag", "arc_challenge"], tmp_path / "yaml")
    hellaswag = yaml.safe_load((tmp_path / "yaml" / "hellaswag.yaml").read_text())
    assert hellaswag["dataset_path"] == "json"
    assert hellaswag["dataset_kwargs"]["data_files"] == {
        "validation": str((tmp_path / "hellaswag_validation_preprocessed.jsonl").resolve())
    }
    assert hellaswag["process_docs"] is None  # the stored rows are already preprocessed
    assert os.path.isabs(hellaswag["include"]) and os.path.exists(hellaswag["include"])
    arc = yaml.safe_load((tmp_path / "yaml" / "arc_challenge.yaml").read_text())
    assert arc["test_split"] == "test" and arc["validation_split"] is None


@pytest.mark.parametrize("status", ["diverged", "failed"])
def test_a_run_that_did_not_complete_is_skipped(tmp_path, status):
    from gdn.cli import main

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text(json.dumps({"status": status}))
    code = main(
        [
            "evaluate",
            "--run-dir",
            str(run_dir),
            "--wikitext-test",
            str(tmp_path / "absent.raw"),
            "--tasks-dir",
            str(tmp_path / "absent"),
            "--out",
            str(run_dir / "eval"),
            "--config-json",
            json.dumps({"lm_eval": {"tasks": ["piqa"]}}),
        ]
    )
    assert code == 0
    for name in ("wikitext.json", "lm_eval.json"):
        payload = json.loads((run_dir / "eval" / name).read_text())
        assert payload["status"] == "skipped" and status in payload["reason"] and payload["results"] == []


def test_unknown_config_key_is_an_error(tmp_path):
    from gdn.evaluate.run import merge_settings

    with pytest.raises(ValueError, match=r"evaluate\.lm_eval\.taks"):
        merge_settings({"lm_eval": {"taks": []}})


def test_hub_fetch_records_the_resolved_revision_and_preprocesses_hellaswag(tmp_path, monkeypatch):
    """The hub path with `datasets` and the hub API stubbed out (tests stay offline)."""
    import datasets
    import huggingface_hub

    class FakeApi:
        def dataset_info(self, path, revision=None):
            assert revision == "main"
            return type("Info", (), {"sha": "f" * 40})()

    calls = []

    def fake_load_dataset(path, name=None, split=None, revision=None):
        calls.append((path, name, split, revision))
        return datasets.Dataset.from_list(
            [
                {
                    "ind": 1,
                    "activity_label": "Roof shingle removal",
                    "ctx_a": "A man is on a roof.",
                    "ctx_b": "he",
                    "ctx": "",
                    "endings": ["starts pulling up roofing.", "eats [title] lunch."],
                    "source_id": "x",
                    "split": "val",
                    "split_type": "indomain",
                    "label": "0",
                }
            ]
        )

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    out = tmp_path / "lmeval"
    prepare(["hellaswag"], out)
    assert calls == [("Rowan/hellaswag", None, "validation", "f" * 40)]
    row = json.loads((out / "hellaswag_validation_preprocessed.jsonl").read_text())
    assert row == {
        "query": "Roof shingle removal: A man is on a roof. He",
        "gold": 0,
        "choices": ["starts pulling up roofing.", "eats. lunch."],
    }
    source = json.loads((out / "manifest.json").read_text())["files"]["hellaswag_validation_preprocessed.jsonl"][
        "source"
    ]
    assert source["dataset"] == "Rowan/hellaswag" and source["revision"] == "f" * 40


def test_no_tasks_still_writes_a_manifest(tmp_path):
    prepare([], tmp_path / "lmeval")
    assert json.loads((tmp_path / "lmeval" / "manifest.json").read_text())["files"] == {}
