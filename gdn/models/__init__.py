"""Model families, registered with transformers' Auto classes on import."""

from transformers import AutoConfig, AutoModelForCausalLM

from gdn.models.configuration import GatedDeltaNetLMConfig, TransformerLMConfig
from gdn.models.gated_deltanet import GatedDeltaNetLM
from gdn.models.transformer import TransformerLM

FAMILIES = {
    "transformer": (TransformerLMConfig, TransformerLM),
    "gdn": (GatedDeltaNetLMConfig, GatedDeltaNetLM),
}

for _config_cls, _model_cls in FAMILIES.values():
    AutoConfig.register(_config_cls.model_type, _config_cls, exist_ok=True)
    AutoModelForCausalLM.register(_config_cls, _model_cls, exist_ok=True)

__all__ = ["FAMILIES", "GatedDeltaNetLM", "GatedDeltaNetLMConfig", "TransformerLM", "TransformerLMConfig"]
