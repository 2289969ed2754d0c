"""Registration of every implementation into Transformers' attention and mask interfaces."""
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from .implementations import IMPLEMENTATIONS, implementation_functions


def mask_function(name: str):
    """The pinned torch backends take Transformers' 4-D SDPA mask; triton_attention a 2-D padding mask."""
    if IMPLEMENTATIONS[name].backend is None:
        from .adapters import triton_attention_mask
        return triton_attention_mask
    return sdpa_mask


def register() -> None:
    """Registers every name in both interfaces. Idempotent; call before building a model."""
    for name, fn in implementation_functions().items():
        AttentionInterface.register(name, fn)
        AttentionMaskInterface.register(name, mask_function(name))
