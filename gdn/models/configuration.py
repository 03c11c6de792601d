"""Hugging Face configs for the two model families.

Everything the forward pass needs is in the config, including the width multipliers
a parametrization chose (`multipliers`, `attn_logit_scale`, `query_scale`), so a saved
model reloads with `AutoModelForCausalLM.from_pretrained` and computes the same function.
"""

from __future__ import annotations

from transformers import PretrainedConfig


class _LMConfig(PretrainedConfig):
    def __init__(
        self,
        vocab_size: int = 50257,
        d_model: int = 256,
        n_layers: int = 4,
        n_heads: int = 4,
        head_dim: int = 64,
        mlp_hidden: int = 704,
        max_position_embeddings: int = 2048,
        norm_eps: float = 1e-6,
        parametrization: str = "sp",
        multipliers: dict | None = None,
        readout_pad_multiple: int = 1,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.d_model = d_model
        self.hidden_size = d_model  # the name transformers and lm-eval look for
        self.n_layers = n_layers
        self.num_hidden_layers = n_layers
        self.n_heads = n_heads
        self.head_dim = head_dim
        self.mlp_hidden = mlp_hidden
        self.max_position_embeddings = max_position_embeddings
        self.norm_eps = norm_eps
        self.parametrization = parametrization
        # Forward multipliers keyed by module kind ("embed", "lm_head", "a_proj", "b_proj").
        self.multipliers = dict(multipliers or {})
        # The readout's rows are padded to this multiple (the logits are cut back to vocab_size):
        # a GEMM dimension like GPT-2's 50,257 breaks the 16-byte alignment cuBLAS's fast
        # kernels need, and the readout's three products then ran on a slow fallback kernel.
        # 1 in configs saved before padding existed, so their checkpoints still load.
        self.readout_pad_multiple = readout_pad_multiple
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)

    @property
    def readout_rows(self) -> int:
        m = max(1, int(self.readout_pad_multiple))
        return -(-self.vocab_size // m) * m

    def multiplier(self, kind: str) -> float:
        return float(self.multipliers.get(kind, 1.0))


class TransformerLMConfig(_LMConfig):
    model_type = "gdn_repro_transformer"

    def __init__(self, rope_theta: float = 10000.0, attn_logit_scale: float | None = None, **kwargs):
        self.rope_theta = rope_theta
        super().__init__(**kwargs)
        # SP default 1/sqrt(d_head); a μP parametrization stores alpha/d_head here.
        self.attn_logit_scale = attn_logit_scale if attn_logit_scale is not None else self.head_dim**-0.5


class GatedDeltaNetLMConfig(_LMConfig):
    model_type = "gdn_repro_gated_deltanet"

    def __init__(
        self,
        head_v_dim: int | None = None,
        conv_size: int = 4,
        query_scale: float | None = None,
        kernel_backend: str = "auto",
        conv_backend: str = "torch",
        recompute_states: bool = False,
        **kwargs,
    ):
        self.conv_size = conv_size
        self.kernel_backend = kernel_backend
        # "triton": the fused short convolution + SiLU (gdn_kernels.short_conv_silu), opt-in until
        # checked on a GPU; "torch": ShortConv's own arithmetic.
        self.conv_backend = conv_backend
        # True: the chunked rule's backward reruns its state pass instead of keeping the chunk
        # states and WY factors from the forward (gdn_kernels.gated_delta_rule).
        self.recompute_states = recompute_states
        super().__init__(**kwargs)
        self.head_v_dim = head_v_dim if head_v_dim is not None else self.head_dim
        self.query_scale = query_scale if query_scale is not None else self.head_dim**-0.5
