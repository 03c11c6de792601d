import pytest

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
