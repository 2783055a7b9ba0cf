"""gSASRec (Petrov & Macdonald, RecSys 2023): a causal SASRec decoder trained with gBCE.

Items are 1..num_items; item 0 is padding. Sequences are left-padded to `seq_len`, so the most
recent item always sits in the last column and gets the last position embedding. A batch whose
longest sequence is shorter may be cut from the left: the outputs do not change (padding
invariance), which is what makes training on length-bucketed batches cheap.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

PADDING_IDX = 0


@dataclass(frozen=True)
class ModelConfig:
    num_items: int
    seq_len: int = 200
    dim: int = 128
    blocks: int = 2
    heads: int = 1
    dropout: float = 0.5
    share_embeddings: bool = False  # score with the input item embeddings instead of separate ones

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class Block(nn.Module):
    """Pre-norm causal self-attention + feed-forward, with residuals."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.norm1 = nn.LayerNorm(cfg.dim)
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.norm2 = nn.LayerNorm(cfg.dim)
        self.ff = nn.Sequential(
            nn.Linear(cfg.dim, cfg.dim), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.dim, cfg.dim)
        )
        self.drop = nn.Dropout(cfg.dropout)
        self.attn_drop = cfg.dropout

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        drop = self.attn_drop if self.training else 0.0
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=drop)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(b, n, d)))
        return x + self.drop(self.ff(self.norm2(x)))

    def attention(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        """Attention weights [B, heads, N, N] (for explanations; eval only)."""
        b, n, d = x.shape
        q, k, _ = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5
        return scores.masked_fill(~attn_mask, float("-inf")).softmax(-1)


class GSASRec(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.item_emb = nn.Embedding(cfg.num_items + 1, cfg.dim, padding_idx=PADDING_IDX)
        self.pos_emb = nn.Embedding(cfg.seq_len, cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.blocks))
        self.norm = nn.LayerNorm(cfg.dim)
        self.out_emb = None if cfg.share_embeddings else nn.Embedding(cfg.num_items + 1, cfg.dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        with torch.no_grad():
            self.item_emb.weight[PADDING_IDX].zero_()

    @property
    def output_embeddings(self) -> torch.Tensor:
        """[num_items + 1, dim]; row 0 (padding) is never recommended."""
        return (self.item_emb if self.out_emb is None else self.out_emb).weight

    def _embed(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = items.shape[1]
        valid = items != PADDING_IDX
        x = self.item_emb(items) * self.cfg.dim**0.5 + self.pos_emb.weight[self.cfg.seq_len - n :]
        x = self.drop(x) * valid.unsqueeze(-1)
        # causal, never attending to padding; a padding row attends to itself so softmax stays finite
        causal = torch.ones(n, n, dtype=torch.bool, device=items.device).tril()
        mask = (causal & valid[:, None, :]) | torch.eye(n, dtype=torch.bool, device=items.device)
        return x, mask.unsqueeze(1)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """Left-padded item_idx [B, N] (N <= seq_len) -> hidden states [B, N, dim]."""
        x, mask = self._embed(items)
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)

    def user_vectors(self, items: torch.Tensor) -> torch.Tensor:
        """The hidden state after the most recent item: the query for top-k over output_embeddings."""
        return self.forward(items)[:, -1]

    def last_attention(self, items: torch.Tensor) -> torch.Tensor:
        """Attention of the last position over the history in the last block, averaged over heads: [B, N]."""
        x, mask = self._embed(items)
        for block in self.blocks[:-1]:
            x = block(x, mask)
        return self.blocks[-1].attention(x, mask)[:, :, -1].mean(1)
