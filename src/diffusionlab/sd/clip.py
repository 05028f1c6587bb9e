"""CLIP text encoder (the ViT-L/14 text tower SD 1.x conditions on).

``ids [B, 77] int64 -> hidden [B, 77, width]``: token + position embeddings, pre-norm transformer layers
with causal self-attention, final layer norm. The output is the last layer's normalised hidden states.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusionlab.nets.attention import Attention
from diffusionlab.sd.config import TextEncoderConfig


def quick_gelu(x: Tensor) -> Tensor:
    """CLIP's GELU approximation ``x * sigmoid(1.702 x)``."""
    return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {"quick_gelu": quick_gelu, "gelu": F.gelu}


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int, activation: str):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; valid choices: {', '.join(ACTIVATIONS)}")
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)
        self.act = ACTIVATIONS[activation]

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class EncoderLayer(nn.Module):
    """``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``; attention is causal."""

    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width, eps=cfg.eps)
        self.attn = Attention(cfg.width, cfg.heads, qkv_bias=True, causal=True)
        self.norm2 = nn.LayerNorm(cfg.width, eps=cfg.eps)
        self.mlp = MLP(cfg.width, cfg.mlp_width, cfg.activation)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class CLIPTextEncoder(nn.Module):
    """``ids [B, N] (N <= max_positions) -> [B, N, width]`` float hidden states."""

    def __init__(self, cfg: TextEncoderConfig | None = None):
        super().__init__()
        cfg = cfg or TextEncoderConfig()
        self.config = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.position_embedding = nn.Embedding(cfg.max_positions, cfg.width)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.layers))
        self.final_norm = nn.LayerNorm(cfg.width, eps=cfg.eps)

    def forward(self, ids: Tensor) -> Tensor:
        if ids.ndim != 2 or ids.shape[1] > self.config.max_positions:
            raise ValueError(f"token ids must be [B, N] with N <= {self.config.max_positions}, got {tuple(ids.shape)}")
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.token_embedding(ids) + self.position_embedding(positions)
        for layer in self.layers:
            x = layer(x)
        return self.final_norm(x)
