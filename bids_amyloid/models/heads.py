"""Heads on top of the per-slice ViT features (sizes from docs/protocol.md, "Network").

- :class:`ProjectionHead`: Linear D→256, LayerNorm, GELU, Dropout, Linear 256→128,
  LayerNorm, Dropout.
- :class:`SliceAttention`: MultiheadAttention(128, 4 heads), residual, LayerNorm,
  Dropout 0.1; padding slices are masked out as keys.
- :class:`AttentionPooling`: softmax over slices of Linear(128→1) / 2.0 (Xavier
  weights, bias 0), padding slices get weight 0.
- :class:`AttentionBranch`: attention followed by pooling — one per role
  (teacher cross-attention; self-attention).
- :class:`Classifier`: Linear 128→64, ReLU, Dropout, Linear 64→1.

Masks are boolean with ``True`` = real slice, shaped like the slice axis.
"""

from __future__ import annotations

import torch
from torch import nn

from bids_amyloid.config import REINIT_LAYERS


class ProjectionHead(nn.Sequential):
    """Per-slice projection of backbone features to the attention width."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, dropouts: tuple[float, float]) -> None:
        super().__init__(
            nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(dropouts[0]),
            nn.Linear(hidden, out_dim), nn.LayerNorm(out_dim), nn.Dropout(dropouts[1]),
        )


class SliceAttention(nn.Module):
    """``Dropout(LayerNorm(query + MHA(query, key, key)))`` with padded keys ignored."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, query: torch.Tensor, key: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """``query (B, Q, D)``, ``key (B, K, D)``, ``key_mask (B, K)`` → ``(B, Q, D)``."""
        attended, _ = self.mha(query, key, key, key_padding_mask=~key_mask, need_weights=False)
        return self.dropout(self.norm(attended + query))


class AttentionPooling(nn.Module):
    """Masked softmax pooling over slices with a learned score and a temperature."""

    def __init__(self, dim: int, temperature: float) -> None:
        super().__init__()
        self.score = nn.Linear(dim, 1)
        self.temperature = float(temperature)
        nn.init.xavier_uniform_(self.score.weight)
        nn.init.zeros_(self.score.bias)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``tokens (B, S, D)``, ``mask (B, S)`` → ``(pooled (B, D), weights (B, S))``."""
        scores = self.score(tokens).squeeze(-1) / self.temperature
        weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=1)
        tokens = tokens.masked_fill(~mask.unsqueeze(-1), 0.0)
        pooled = torch.einsum("bs,bsd->bd", weights.to(tokens.dtype), tokens)
        return pooled, weights


class AttentionBranch(nn.Module):
    """Slice attention then attention pooling over the query's real slices."""

    def __init__(self, dim: int, heads: int, dropout: float, temperature: float) -> None:
        super().__init__()
        self.attn = SliceAttention(dim, heads, dropout)
        self.pool = AttentionPooling(dim, temperature)

    def forward(self, query: torch.Tensor, query_mask: torch.Tensor, key: torch.Tensor,
                key_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pool(self.attn(query, key, key_mask), query_mask)


class Classifier(nn.Sequential):
    """Two-layer classifier giving one logit per session."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 1))

    def reset_for_student(self, gain: float, layers: str = "last") -> None:
        """Before distillation: Xavier-uniform re-initialisation (bias 0) of the output layer
        with ``gain``, and with ``layers="all"`` of the first layer too (gain 1)."""
        if layers not in REINIT_LAYERS:
            raise ValueError(f"layers must be one of {REINIT_LAYERS}, got {layers!r}")
        first, last = self[0], self[-1]
        assert isinstance(first, nn.Linear) and isinstance(last, nn.Linear)
        if layers == "all":
            nn.init.xavier_uniform_(first.weight)
            nn.init.zeros_(first.bias)
        nn.init.xavier_uniform_(last.weight, gain=gain)
        nn.init.zeros_(last.bias)
