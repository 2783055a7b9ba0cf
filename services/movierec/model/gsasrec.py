"""gSASRec (Petrov & Macdonald, RecSys 2023): a causal SASRec decoder trained with gBCE.

Items are 1..num_items; item 0 is padding. Sequences are left-padded to `seq_len`, so the most
recent item always sits in the last column and gets the last position embedding. A batch whose
longest sequence is shorter may be cut from the left: the outputs do not change (padding
invariance), which is what makes training on length-bucketed batches cheap.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from movierec.model.padding import PADDING_IDX


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout with the mask drawn from raw random bytes.

    Same distribution as `F.dropout` (keep probability quantised to 1/256), about 6x faster on
    CPU, where `bernoulli_` costs ~20 ns per element and was a third of a training step.
    """
    if not training or p <= 0.0:
        return x
    threshold = round(p * 256)
    words = torch.empty((x.numel() + 7) // 8, dtype=torch.int64, device=x.device).random_(-(2**63), 2**63 - 1)
    keep = words.view(torch.uint8)[: x.numel()].view(x.shape) >= threshold
    return (x * keep).mul_(256.0 / (256 - threshold))  # bool mask: cast inside the kernel, no copy


class Dropout(nn.Module):
    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


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
            nn.Linear(cfg.dim, cfg.dim), nn.GELU(), Dropout(cfg.dropout), nn.Linear(cfg.dim, cfg.dim)
        )
        self.drop = Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if self.training:  # explicit attention so the dropout on its weights uses the fast mask
            a = self.drop(self._weights(q, k, attn_bias)) @ v
        else:
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, is_causal=attn_bias is None)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(b, n, d)))
        return x + self.drop(self.ff(self.norm2(x)))

    def last_position(self, x: torch.Tensor, attn_bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Eval-mode output at the last position only [B, dim], and its attention weights [B, heads, N].

        Keys and values still come from every position, but the query, projection and feed-forward
        run for one row instead of N: what serving needs from the last block, at about a third of the cost.
        """
        b, n, d = x.shape
        heads, dh = self.heads, d // self.heads
        h = self.norm1(x)
        q = F.linear(h[:, -1:], self.qkv.weight[:d], self.qkv.bias[:d]).view(b, 1, heads, dh).transpose(1, 2)
        k, v = F.linear(h, self.qkv.weight[d:], self.qkv.bias[d:]).view(b, n, 2, heads, dh).permute(2, 0, 3, 1, 4)
        weights = self._weights(q, k, None if attn_bias is None else attn_bias[..., -1:, :])
        last = x[:, -1] + self.proj((weights @ v).reshape(b, d))
        return last + self.ff(self.norm2(last)), weights[:, :, 0]

    @staticmethod
    def _weights(q: torch.Tensor, k: torch.Tensor, attn_bias: torch.Tensor | None) -> torch.Tensor:
        """softmax(q kᵀ / √d + bias); one baddbmm adds the mask and the scale inside the GEMM.

        No bias: every key is visible to every query (the last position of an unpadded batch).
        """
        b, h, nq, dh = q.shape
        nk = k.shape[2]
        if attn_bias is None:
            scores = torch.matmul(q, k.transpose(-1, -2)).mul_(dh**-0.5)
            return scores.softmax(-1)
        scores = torch.baddbmm(
            attn_bias.expand(b, h, nq, nk).reshape(b * h, nq, nk),
            q.reshape(b * h, nq, dh), k.reshape(b * h, nk, dh).transpose(1, 2), alpha=dh**-0.5,
        )
        return scores.softmax(-1).view(b, h, nq, nk)

    def attention(self, x: torch.Tensor, attn_bias: torch.Tensor | None) -> torch.Tensor:
        """Attention weights [B, heads, N, N] (for explanations; eval only)."""
        b, n, d = x.shape
        q, k, _ = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return self._weights(q, k, _causal_bias(n, x.device, x.dtype) if attn_bias is None else attn_bias)


def _causal_bias(n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[1, 1, n, n] additive mask: 0 on and below the diagonal, -inf above."""
    return torch.full((n, n), float("-inf"), device=device, dtype=dtype).triu_(1)[None, None]


class GSASRec(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.item_emb = nn.Embedding(cfg.num_items + 1, cfg.dim, padding_idx=PADDING_IDX)
        self.pos_emb = nn.Embedding(cfg.seq_len, cfg.dim)
        self.drop = Dropout(cfg.dropout)
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

    def _embed(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        n = items.shape[1]
        valid = items != PADDING_IDX
        x = self.item_emb(items) * self.cfg.dim**0.5 + self.pos_emb.weight[self.cfg.seq_len - n :]
        x = self.drop(x) * valid.unsqueeze(-1)
        if not self.training and bool(valid.all()):
            return x, None  # no padding (e.g. one user at their own length): plain causal attention, no mask
        # causal, never attending to padding; a padding row attends to itself so softmax stays finite
        causal = torch.ones(n, n, dtype=torch.bool, device=items.device).tril()
        allowed = (causal & valid[:, None, :]) | torch.eye(n, dtype=torch.bool, device=items.device)
        bias = torch.zeros(allowed.shape, dtype=x.dtype, device=items.device).masked_fill_(~allowed, float("-inf"))
        return x, bias.unsqueeze(1)  # additive attention mask [B, 1, N, N]

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """Left-padded item_idx [B, N] (N <= seq_len) -> hidden states [B, N, dim]."""
        x, mask = self._embed(items)
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)

    def user_vectors(self, items: torch.Tensor) -> torch.Tensor:
        """The hidden state after the most recent item: the query for top-k over output_embeddings."""
        return self.forward(items)[:, -1]

    def user_vectors_with_attention(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One eval pass: user vectors [B, dim] and the last block's attention of the last position [B, N]."""
        x, mask = self._embed(items)
        *first, last_block = cast(list[Block], list(self.blocks))
        for block in first:
            x = block(x, mask)
        last, weights = last_block.last_position(x, mask)
        return self.norm(last), weights.mean(1)

    def last_attention(self, items: torch.Tensor) -> torch.Tensor:
        """Attention of the last position over the history in the last block, averaged over heads: [B, N]."""
        x, mask = self._embed(items)
        *first, last_block = cast(list[Block], list(self.blocks))
        for block in first:
            x = block(x, mask)
        return last_block.attention(x, mask)[:, :, -1].mean(1)
