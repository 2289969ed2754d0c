"""Autocast for attention inputs: the dtype torch's SDPA would compute in, for our kernel and the pinned backends."""
import torch


def autocast_inputs(*tensors):
    """Under autocast, floating tensors in the autocast dtype, as torch's scaled_dot_product_attention does
    (models under mixed precision hand over fp32 queries and keys after RoPE next to bf16 values)."""
    device = next(t for t in tensors if isinstance(t, torch.Tensor)).device.type
    if not torch.is_autocast_enabled(device):
        return tensors
    dtype = torch.get_autocast_dtype(device)
    return tuple(t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in tensors)
