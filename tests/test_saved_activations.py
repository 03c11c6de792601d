"""The saved-for-backward accounting of scripts/saved_activations.py, on tiny CPU models."""

import importlib.util
import sys

import pytest
import torch
import torch.nn as nn

from gdn.bench.shapes import build
from tests.synthetic import REPO

SHAPE = {"name": "tiny", "width": 32, "base_width": 8, "n_layers": 2, "width_mode": "head_dim", "n_heads": 2,
         "mlp_ratio": {"transformer": 2.0, "gdn": 1.5}, "seq_len": 16}


def _load_script():
    spec = importlib.util.spec_from_file_location("saved_activations", REPO / "scripts" / "saved_activations.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


sa = _load_script()


class _Twice(nn.Module):
    """Saves one activation twice (x * x saves x as both operands) next to a weight."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8, bias=False)

    def forward(self, x):
        h = self.proj(x)
        return (h * h).sum()


def _record(model, x):
    with sa.SavedTensorLog(model) as log:
        model(x)
    return log.records


def test_parameters_are_excluded_and_a_tensor_saved_twice_counts_once():
    model = _Twice()
    x = torch.randn(4, 8)
    records = _record(model, x)
    param = model.proj.weight.untyped_storage().data_ptr()
    assert all(r.storage != param for r in records)  # linear saves its weight too: not an activation
    squares = [r for r in records if r.op == "mul"]
    assert len(squares) == 2 and squares[0].storage == squares[1].storage
    h_bytes = 4 * 8 * 4
    assert sum(r.nbytes for r in squares) == 2 * h_bytes
    assert sa.dedup_bytes(squares) == h_bytes
    # The model input is saved by the linear (for the weight's gradient): attributed to proj.
    assert [r.module for r in records if r.op == "linear"] == ["proj"]
    assert sa.summary(records, n_layers=1, scale=1.0)["dedup_bytes"] == 2 * h_bytes


def test_kinds_and_layers_come_from_module_names():
    assert sa.module_kind("blocks.3.mixer.q_conv") == ("mixer.q_conv", 3)
    assert sa.module_kind("blocks.0.mlp") == ("mlp", 0)
    assert sa.module_kind("lm_head") == ("lm_head", None)
    assert sa.module_kind("") == ("loss", None)


@pytest.fixture(scope="module")
def gdn_records():
    model = build(SHAPE, "gdn_mup", 64, torch.device("cpu"), torch.float32)

    def run(batch):
        ids = torch.randint(0, 64, (batch, SHAPE["seq_len"]), generator=torch.Generator().manual_seed(0))
        return sa.record_training_forward(model, ids)

    return model, run(1), run(2)


def test_a_model_forward_is_attributed_to_its_modules(gdn_records):
    model, records, _ = gdn_records
    kinds = sa.by_kind(records, n_layers=SHAPE["n_layers"])
    for kind in ("mlp", "mlp.down_proj", "mixer.q_proj", "mixer.q_conv", "mixer", "mixer.o_norm", "loss"):
        assert kinds[kind]["dedup"] > 0, kind
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    assert not params & {r.storage for r in records}
    # Kinds partition the deduplicated total; the naive sum counts repeated saves again.
    total = sa.summary(records, SHAPE["n_layers"], 1.0)
    assert sum(k["dedup"] for k in kinds.values()) == sa.dedup_bytes(records) == total["dedup_bytes"]
    assert total["dedup_bytes"] < total["naive_bytes"] == sum(r.nbytes for r in records)
    assert kinds["mlp"]["per_layer"] and kinds["mlp"]["dedup_per_layer"] == kinds["mlp"]["dedup"] / 2


def test_saved_bytes_of_the_mlp_double_with_the_tokens(gdn_records):
    _, one, two = gdn_records
    kinds_one, kinds_two = sa.by_kind(one, SHAPE["n_layers"]), sa.by_kind(two, SHAPE["n_layers"])
    for kind in ("mlp", "mlp.down_proj"):
        assert kinds_two[kind]["dedup"] == 2 * kinds_one[kind]["dedup"]
        assert kinds_two[kind]["naive"] == 2 * kinds_one[kind]["naive"]
    # Scaling the one-sequence record by 2 predicts the two-sequence one for the MLP.
    assert sa.by_kind(one, SHAPE["n_layers"], scale=2.0)["mlp"]["dedup"] == kinds_two["mlp"]["dedup"]
    # Measuring one block of two and scaling the blocks by 2 gives the per-layer figures of both.
    first = [r for r in one if not r.module.startswith("blocks.1.")]
    scaled = sa.by_kind(first, SHAPE["n_layers"], layer_scale=2.0)
    assert scaled["mlp"]["dedup"] == kinds_one["mlp"]["dedup"]
    assert scaled["loss"]["dedup"] == kinds_one["loss"]["dedup"]
