import math
from pathlib import Path

import pytest
import yaml

from gdn import config as C
from tests.synthetic import REPO, tiny_config


@pytest.fixture
def cfg(tmp_path):
    return tiny_config(tmp_path)


def test_shipped_tier_configs_are_valid():
    for name in ("config.yaml",):
        loaded = C.load(REPO / "config" / name)
        assert loaded["tier"]


@pytest.mark.parametrize(
    "mutate, key",
    [
        (lambda c: c.__setitem__("variants", ["gdn_fancy"]), "variants.0"),
        (lambda c: c["grid"].__setitem__("widths", [16, 33]), "grid.widths"),
        (lambda c: c["grid"].update(lrs=[1e-3, 0.0]) or c["grid"].pop("log2_lrs"), "grid.lrs.1"),
        (lambda c: c["grid"].update(lrs=[-1e-3]) or c["grid"].pop("log2_lrs"), "grid.lrs.0"),
        (lambda c: c["data"]["local"].__setitem__("train", ["no/such/file.txt"]), "data.local.train"),
        (lambda c: c["model"].__setitem__("width_mode", "depth"), "model.width_mode"),
        (lambda c: c["train"].__setitem__("steps", 0), "train.steps"),
        (lambda c: c.__setitem__("unknown_key", 1), "<top level>"),
    ],
)
def test_bad_values_name_the_key(cfg, tmp_path, mutate, key):
    mutate(cfg)
    with pytest.raises(C.ConfigError) as err:
        C.validate(cfg, base_dir=tmp_path)
    assert key in str(err.value)


def test_cells_and_paths(cfg, tmp_path):
    C.validate(cfg, base_dir=tmp_path)
    cells = C.cells(cfg)
    assert len(cells) == 2 * 2 * 2 * 1
    cell = C.cell_from_keys(cfg, "gdn_mup", "32", "lr-6", "0")
    assert cell.run_dir == "results/runs/tiny/gdn_mup/w32/lr-6/s0"
    assert cell.lr == 2.0**-6
    with pytest.raises(C.ConfigError, match="not in grid"):
        C.cell_from_keys(cfg, "gdn_mup", "32", "lr-7", "0")
    with pytest.raises(C.ConfigError, match="not in this tier's grid"):
        C.cell_from_keys(cfg, "gdn_mup", "48", "lr-6", "0")


def test_lr_keys_are_unique_and_readable():
    assert C.lr_key(-8) == "lr-8"
    assert C.lr_key(-7.5) == "lr-7.5"
    assert C.lr_key(-11.6438) == "lr-11.644"


def test_section_json_holds_only_named_sections(cfg):
    text = C.section_json(cfg, "model", extra=1)
    assert '"model"' in text and '"train"' not in text and '"extra":1' in text


def test_hub_rows_join_back_into_the_raw_layout(tmp_path):
    from gdn.data.prepare import join_hub_rows, split_wikitext_pages
    from tests.synthetic import wikitext_raw

    raw = wikitext_raw(tmp_path / "wiki.test.raw", 4).read_text()
    rows = [line if line != " \n" else "" for line in raw.splitlines(keepends=True)]  # how the hub stores it
    assert join_hub_rows(rows) == raw
    assert len(split_wikitext_pages(raw)) == 4


def test_hub_source_offline_names_the_key_to_set(tmp_path, monkeypatch):
    """No hub and no local path: an immediate error that says which config keys to set, no hang."""
    import time

    from gdn.data.prepare import prepare

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = {"source": "hub", "hub": {"path": "Salesforce/wikitext", "name": "wikitext-103-raw-v1",
                                     "revision": "b08601e04326c79dfdd32d625aee71d232d685c3"}}
    start = time.monotonic()
    with pytest.raises(C.ConfigError) as err:
        prepare(data, tmp_path / "text")
    assert time.monotonic() - start < 5
    assert "data.source" in str(err.value) and "data.local" in str(err.value)
    assert not (tmp_path / "text" / "train.jsonl").exists()


# ---------------------------------------------------------------- whole-config schema, defaults, overlays


@pytest.mark.parametrize(
    "mutate, key",
    [
        (lambda c: c["grid"].__setitem__("log2_lrs", [-8, float("nan")]), "grid.log2_lrs.1"),
        (lambda c: c["grid"].__setitem__("log2_lrs", [float("-inf")]), "grid.log2_lrs.0"),
        (lambda c: c["grid"].update(lrs=[float("inf")], log2_lrs=None), "grid.lrs.0"),
        (lambda c: c["model"].__setitem__("init_std", float("nan")), "model.init_std"),
        (lambda c: c["model"].__setitem__("gdn_expand_v", 0.01), "model.gdn_expand_v"),
        (lambda c: c["grid"].__setitem__("lrs", [1e-3]), "grid"),  # both lrs and log2_lrs
        (lambda c: c["grid"].__setitem__("log2_lrs", None), "grid"),  # neither
        (lambda c: c.__setitem__("evaluate", {"widht": [32]}), "evaluate"),
        (lambda c: c.__setitem__("evaluate", {"lm_eval": {"limt": 3}}), "evaluate.lm_eval"),
        (lambda c: c.__setitem__("evaluate", {"batch_size": 0}), "evaluate.batch_size"),
        (lambda c: c.__setitem__("coordcheck", {"stepz": 3}), "coordcheck"),
        (lambda c: c.__setitem__("coordcheck", {"log2_lr": {"gdn_fancy": -7}}), "coordcheck.log2_lr"),
        (lambda c: c.__setitem__("transfer", {"max_shift_octaves": 1.0}), "transfer"),
        (lambda c: c.__setitem__("transfer", {"ci_level": 1.5}), "transfer.ci_level"),
        (lambda c: c.__setitem__("transfer", {"controls": {"negative": "gdn_fancy"}}), "transfer.controls.negative"),
        (lambda c: c["bench"].__setitem__("overhead", {"shapes": ["quick"], "iter": 3}), "bench.overhead"),
        (lambda c: c["bench"]["shapes"]["quick"].__setitem__("widht", 3), "bench.shapes.quick"),
        (lambda c: c.__setitem__("gpu_memory_mb", 0), "gpu_memory_mb"),
        (lambda c: c.update(lmeval_data={"local_dir": "no/such/dir"}, evaluate={"widths": "all"}),
         "lmeval_data.local_dir"),
        (lambda c: c.__setitem__("lmeval_data", {"manifest": "no/such/SHA256SUMS"}), "lmeval_data.manifest"),
    ],
)
def test_every_section_is_checked(cfg, tmp_path, mutate, key):
    mutate(cfg)
    with pytest.raises(C.ConfigError) as err:
        C.validate(cfg, base_dir=tmp_path)
    assert f"'{key}" in str(err.value)


def test_contract_keys_are_accepted(cfg, tmp_path):
    cfg["model"]["gate_init_std"] = 0.01
    cfg["gpu_memory_mb"] = None
    cfg["transfer"] = {"base_width": None, "fit_window_octaves": 2.0, "ci_level": 0.9, "bootstrap_draws": 100,
                       "bootstrap_seed": 1, "transfer_max_abs_shift": 0.5, "ci_bound_octaves": 1.0,
                       "gate_improve_sd": 3.0, "gate_equal_sd": 3.0, "controls": {"negative": None, "positive": None}}
    cfg["coordcheck"] = {"widths": [16, 32], "steps": 2, "seeds": [0],
                         "log2_lr": {"gdn_mup": -7, "transformer_mup": -6}, "batch_size": 2, "seq_len": 16,
                         "probe_seed": 1, "n_layers": None, "width_mode": None, "kernel_backend": "torch",
                         "adam_eps": 1e-8, "threads": None, "slope_tolerance": 0.25, "noise_factor": 3.0,
                         "warmup_steps": 0, "readout_zero_init": None}
    C.validate(cfg, base_dir=tmp_path)


def test_the_schema_is_the_home_of_defaults():
    evaluate = C.defaults("evaluate")
    assert evaluate["batch_size"] == 8 and evaluate["lm_eval"]["bootstrap_iters"] == 1000
    assert C.defaults("transfer")["controls"] == {"negative": "transformer_sp", "positive": "transformer_mup"}
    assert C.defaults("model")["gate_init_std"] is None
    merged = C.settings({"evaluate": {"lm_eval": {"limit": 5}, "context": None}}, "evaluate")
    assert merged["lm_eval"]["limit"] == 5 and merged["lm_eval"]["num_fewshot"] == 0 and merged["context"] is None


def test_module_defaults_agree_with_the_schema():
    """Until the modules read their defaults from the schema, the two must not drift apart."""
    from gdn.coordcheck import DEFAULTS as COORDCHECK
    from gdn.evaluate.run import DEFAULTS as EVALUATE

    schema = C.defaults("evaluate")
    for key, value in EVALUATE.items():
        if isinstance(value, dict):
            assert {k: schema[key][k] for k in value} == value, key
        else:
            assert schema[key] == value, key
    assert C.defaults("coordcheck") == COORDCHECK


def test_overlay_combines_as_snakemake_does_and_lrs_need_an_explicit_null(tmp_path):
    base = {"tier": "x", "grid": {"widths": [16], "log2_lrs": [-8], "seeds": [0]}, "evaluate": {"threads": 1}}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    (tmp_path / "lrs.yaml").write_text("grid: {lrs: [0.001]}\n")
    (tmp_path / "lrs-null.yaml").write_text("grid: {lrs: [0.001], log2_lrs: null}\n")
    merged = C.combine(tmp_path / "lrs.yaml", workflow_config=tmp_path / "base.yaml")
    assert merged["grid"] == {"widths": [16], "log2_lrs": [-8], "seeds": [0], "lrs": [0.001]}
    with pytest.raises(C.ConfigError, match="grid.log2_lrs: null"):
        C._check_lr_grid(merged["grid"])
    fixed = C.combine(tmp_path / "lrs.yaml", tmp_path / "lrs-null.yaml", workflow_config=tmp_path / "base.yaml")
    C._check_lr_grid(fixed["grid"])
    assert C.grid_log2_lrs(fixed) == pytest.approx([math.log2(0.001)])
    assert fixed["evaluate"] == {"threads": 1}


def test_snakemake_merges_overlays_the_way_combine_does(tmp_path):
    """The real snakemake: an overlay with grid.lrs and log2_lrs: null gives the lrs' cells."""
    import subprocess
    import sys

    from tests.synthetic import write_config

    config = tiny_config(tmp_path)
    (tmp_path / "config").mkdir()
    write_config(config, tmp_path / "config" / "config.yaml")
    (tmp_path / "lrs.yaml").write_text("grid: {lrs: [0.0078125], log2_lrs: null}\n")
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
           "--cores", "1", "-n", "--configfile", str(tmp_path / "lrs.yaml")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "lr-7/s0/metrics.json" in done.stdout and "lr-8/s0" not in done.stdout
    (tmp_path / "both.yaml").write_text("grid: {lrs: [0.0078125]}\n")
    done = subprocess.run(cmd[:-1] + [str(tmp_path / "both.yaml")], capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "grid.log2_lrs: null" in done.stdout + done.stderr


def test_validate_command_takes_the_files_snakemake_takes(tmp_path, monkeypatch):
    import subprocess
    import sys

    from tests.synthetic import write_config

    config = tiny_config(tmp_path)
    (tmp_path / "config").mkdir()
    write_config(config, tmp_path / "config" / "config.yaml")
    (tmp_path / "overlay.yaml").write_text("grid: {widths: [16, 33]}\n")
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    ok = subprocess.run([sys.executable, "-m", "gdn", "validate"], cwd=tmp_path, capture_output=True, text=True,
                        env=env)
    assert ok.returncode == 0 and "valid tier 'tiny'" in ok.stdout, ok.stderr
    bad = subprocess.run([sys.executable, "-m", "gdn", "validate", "--configfile", "overlay.yaml"], cwd=tmp_path,
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 1
    assert "config/config.yaml + overlay.yaml" in bad.stderr and "grid.widths" in bad.stderr
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_missing_task_files_are_named_before_any_job(cfg, tmp_path):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "piqa_validation.jsonl").write_text("{}\n")
    cfg["lmeval_data"] = {"local_dir": str(tasks)}
    cfg["evaluate"] = {"lm_eval": {"tasks": ["piqa"]}}
    C.validate(cfg, base_dir=tmp_path)
    cfg["evaluate"] = {"lm_eval": {"tasks": ["piqa", "arc_easy"]}}
    with pytest.raises(C.ConfigError, match="arc_easy_test.jsonl"):
        C.validate(cfg, base_dir=tmp_path)
    cfg["evaluate"]["widths"] = [1024]  # nothing is evaluated: the files are not needed
    C.validate(cfg, base_dir=tmp_path)


def _stand_in_files(config: dict, base: Path) -> None:
    """Empty files at every local data path a tier names (a fresh clone has no .data/)."""
    local = (config.get("data") or {}).get("local") or {}
    for split in ("train", "valid", "test"):
        for name in local.get(split) or []:
            (base / name).parent.mkdir(parents=True, exist_ok=True)
            (base / name).touch()
    lmeval_dir = (config.get("lmeval_data") or {}).get("local_dir")
    if lmeval_dir:
        from gdn.evaluate.tasks import task_data

        (base / lmeval_dir).mkdir(parents=True, exist_ok=True)
        for task in C.settings(config, "evaluate")["lm_eval"]["tasks"]:
            spec = task_data(task)
            if spec.hub is not None:
                (base / lmeval_dir / spec.file).touch()


def test_shipped_tiers_validate_as_snakemake_combines_them(tmp_path):
    pilots = sorted(f"pilots/{p.name}" for p in (REPO / "config" / "pilots").glob("*.yaml"))
    study_overlays = ["bench-only.yaml", "study-replicate.yaml", *pilots]
    for overlay in ("study.yaml", "paper.yaml", *study_overlays):
        files = [REPO / "config" / overlay]
        if overlay in study_overlays:
            files.insert(0, REPO / "config" / "study.yaml")  # overlays on the study tier
        config = C.combine(*files, workflow_config=REPO / "config" / "config.yaml")
        _stand_in_files(config, tmp_path)
        C.validate(config, base_dir=tmp_path)


def test_evaluated_cells_follow_widths_seeds_and_learning_rates(cfg):
    cfg["evaluate"] = {"widths": [32], "log2_lrs": [-6]}
    assert {(c.variant, c.width, c.log2_lr) for c in C.evaluated_cells(cfg)} == {
        ("transformer_mup", 32, -6.0), ("gdn_mup", 32, -6.0)}
    cfg["evaluate"] = {"widths": "all", "seeds": [1]}
    assert C.evaluated_cells(cfg) == []
