"""hf_sdpa: torch's SDPA backends as pinned, honest Transformers attention implementations, and our own
Triton FlashAttention (`triton_attention`). Importing the package registers every name with Transformers:

    import hf_sdpa
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa_fa2")
"""
from .errors import AttentionRefused
from .implementations import IMPLEMENTATIONS, Implementation
from .inputs import AttentionInput
from .registry import register

__version__ = "0.1.0"
NAMES = list(IMPLEMENTATIONS)

register()

__all__ = ["AttentionRefused", "AttentionInput", "IMPLEMENTATIONS", "Implementation", "NAMES", "register"]
