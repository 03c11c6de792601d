import os

import pytest

# Tests never reach the network: the hub is off for every library that asks.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def tiny_spec():
    return {"n_layers": 1, "base_width": 16, "width_mode": "head_dim", "n_heads": 2, "head_dim": 8,
            "mlp_ratio": {"transformer": 2.0, "gdn": 1.5}, "init_std": 0.02, "gdn_expand_v": 1}
