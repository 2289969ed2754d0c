"""hf_sdpa: torch's SDPA backends as pinned, honest Transformers attention implementations, and our own
Triton FlashAttention (`triton_attention`). Importing the package registers every name with Transformers:

    import hf_sdpa
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa_fa2")
    with hf_sdpa.trace() as t:   # which kernel really ran, per attention call
        model(**batch)
"""
from .errors import AttentionRefused
from .implementations import IMPLEMENTATIONS, Implementation
from .inputs import AttentionInput
from .registry import register
from .trace import Trace, trace

__version__ = "0.1.0"
NAMES = list(IMPLEMENTATIONS)

register()

__all__ = ["AttentionRefused", "AttentionInput", "IMPLEMENTATIONS", "Implementation", "NAMES", "register", "trace",
           "Trace"]
