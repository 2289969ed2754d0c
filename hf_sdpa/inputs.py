"""One attention input described once, so every implementation can be asked whether it takes it."""
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class AttentionInput:
    """query (B, Hq, Sq, D), key/value (B, Hkv, Skv, D), and what shapes the attention pattern.

    padding: (B, Skv) bool, True = attend. causal is bottom-right aligned. dense_mask, when given, is the
    4-D mask Transformers' sdpa_mask hands over (it then stands for padding, causality and window).
    """
    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    padding: Optional[torch.Tensor] = None
    causal: bool = False
    window: Optional[int] = None
    softcap: Optional[float] = None
    dropout: float = 0.0
    scale: Optional[float] = None
    dense_mask: Optional[torch.Tensor] = None

    def pattern_problems(self):
        """What is wrong with the padding mask or the window, each with what to do ([] when nothing)."""
        problems = []
        b, skv = self.query.shape[0], self.key.shape[-2]
        if self.padding is not None and (tuple(self.padding.shape) != (b, skv) or self.padding.is_floating_point()):
            problems.append(f"the padding mask must be (batch, kv_len) = {(b, skv)}, bool or integer with 1 = attend, "
                            f"got {tuple(self.padding.shape)} {self.padding.dtype}.")
        if self.window is not None and self.window < 1:
            problems.append(f"a sliding window must be a positive number of keys, got {self.window}.")
        return problems

    def sdpa_form(self):
        """(4-D bool mask or None, is_causal) as Transformers' SDPA path passes this input to torch."""
        if self.dense_mask is not None:
            return self.dense_mask, False
        q_len, kv_len = self.query.shape[2], self.key.shape[2]
        window_bites = self.window is not None and self.window < kv_len
        if self.padding is None and not window_bites and (not self.causal or q_len == kv_len or q_len == 1):
            return None, self.causal and q_len > 1
        b = self.query.shape[0]
        device = self.query.device
        rows = torch.arange(q_len, device=device)[:, None] + (kv_len - q_len)
        cols = torch.arange(kv_len, device=device)[None, :]
        keep = torch.ones(b, 1, q_len, kv_len, dtype=torch.bool, device=device)
        if self.causal:
            keep &= cols <= rows
        if window_bites:
            keep &= cols > rows - self.window
        if self.padding is not None:
            keep &= self.padding[:, None, None, :].to(torch.bool)
        return keep, False

    def describe(self) -> str:
        q, k = self.query, self.key
        mask = "4-D mask" if self.dense_mask is not None else ("padding mask" if self.padding is not None else "no mask")
        extras = [mask] if self.dense_mask is not None else [mask, "causal" if self.causal else "bidirectional"]
        if self.window is not None:
            extras.append(f"window {self.window}")
        if self.softcap is not None:
            extras.append(f"softcap {self.softcap}")
        if self.dropout:
            extras.append(f"dropout {self.dropout}")
        return (f"query {tuple(q.shape)} {str(q.dtype).replace('torch.', '')} on {q.device}, "
                f"key/value {tuple(k.shape)}, " + ", ".join(extras))
