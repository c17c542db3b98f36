"""Whisper as lean PyTorch modules: fused projections, a static KV cache, no per-step bookkeeping.

Weights come from the bundled CTranslate2 files (asr/weights.py) or from a transformers checkpoint
(asr/models.py maps its names onto these). The math is Whisper's: pre-norm residual blocks, exact GELU,
sinusoidal encoder positions and learned decoder positions, a vocabulary head tied to the token embedding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .kv_cache import KVCache


@dataclass(frozen=True)
class ModelDims:
    n_mels: int
    n_audio_ctx: int
    n_audio_state: int
    n_audio_head: int
    n_audio_layer: int
    n_vocab: int
    n_text_ctx: int
    n_text_state: int
    n_text_head: int
    n_text_layer: int

    @classmethod
    def from_state_dict(cls, sd: dict[str, Tensor]) -> ModelDims:
        def count(prefix: str) -> int:
            return len({k.split(".")[2] for k in sd if k.startswith(prefix)})

        return cls(
            n_mels=sd["encoder.conv1.weight"].shape[1],
            n_audio_ctx=sd["encoder.positional_embedding"].shape[0],
            n_audio_state=sd["encoder.positional_embedding"].shape[1],
            n_audio_head=int(sd["encoder.n_head"]),
            n_audio_layer=count("encoder.blocks."),
            n_vocab=sd["decoder.token_embedding.weight"].shape[0],
            n_text_ctx=sd["decoder.positional_embedding"].shape[0],
            n_text_state=sd["decoder.positional_embedding"].shape[1],
            n_text_head=int(sd["decoder.n_head"]),
            n_text_layer=count("decoder.blocks."),
        )


def split_heads(x: Tensor, n_parts: int, n_head: int) -> Tensor:
    """x: shape = (n_batch, n_ctx, n_parts * d) -> shape = (n_parts, n_batch, n_head, n_ctx, d_head)."""
    n_batch, n_ctx, width = x.shape
    return x.view(n_batch, n_ctx, n_parts, n_head, width // (n_parts * n_head)).permute(2, 0, 3, 1, 4)


class SelfAttention(nn.Module):
    def __init__(self, d: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(d, 3 * d)  # fused q, k, v
        self.out = nn.Linear(d, d)

    def split(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys, values, each shape = (n_batch, n_head, n_ctx, d_head)."""
        q, k, v = split_heads(self.qkv(x), 3, self.n_head)
        return q, k, v

    def merge(self, x: Tensor) -> Tensor:
        n_batch, _, n_ctx, _ = x.shape
        return self.out(x.transpose(1, 2).reshape(n_batch, n_ctx, -1))


class EncoderBlock(nn.Module):
    def __init__(self, d: int, n_head: int) -> None:
        super().__init__()
        self.attn_ln = nn.LayerNorm(d)
        self.attn = SelfAttention(d, n_head)
        self.mlp_ln = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.attn.split(self.attn_ln(x))
        x = x + self.attn.merge(F.scaled_dot_product_attention(q, k, v))
        return x + self.fc2(F.gelu(self.fc1(self.mlp_ln(x))))


class AudioEncoder(nn.Module):
    positional_embedding: Tensor  # a buffer: the sinusoids Whisper was trained with

    def __init__(self, dims: ModelDims) -> None:
        super().__init__()
        d = dims.n_audio_state
        self.n_head = dims.n_audio_head
        self.conv1 = nn.Conv1d(dims.n_mels, d, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(d, d, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positional_embedding", torch.zeros(dims.n_audio_ctx, d))
        self.blocks = nn.ModuleList(EncoderBlock(d, dims.n_audio_head) for _ in range(dims.n_audio_layer))
        self.ln_post = nn.LayerNorm(d)

    def forward(self, mel: Tensor) -> Tensor:
        """mel: shape = (n_audio, n_mels, 2 * n_audio_ctx) -> shape = (n_audio, n_audio_ctx, d)."""
        x = F.gelu(self.conv1(mel))
        x = F.gelu(self.conv2(x)).transpose(1, 2)
        x = x + self.positional_embedding[: x.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.ln_post(x)


class CrossAttention(nn.Module):
    def __init__(self, d: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)  # fused k, v (Whisper's k has no bias: zero here)
        self.out = nn.Linear(d, d)

    def project_audio(self, audio_features: Tensor) -> tuple[Tensor, Tensor]:
        k, v = split_heads(self.kv(audio_features), 2, self.n_head)
        return k.contiguous(), v.contiguous()


class DecoderBlock(nn.Module):
    def __init__(self, d: int, n_head: int) -> None:
        super().__init__()
        self.attn_ln = nn.LayerNorm(d)
        self.attn = SelfAttention(d, n_head)
        self.cross_attn_ln = nn.LayerNorm(d)
        self.cross_attn = CrossAttention(d, n_head)
        self.mlp_ln = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)

    def forward(
        self, x: Tensor, cache: KVCache, layer: int, start: int, end: int, mask: Tensor | None
    ) -> Tensor:
        n_batch = x.shape[0]
        q, k, v = self.attn.split(self.attn_ln(x))
        cache.self_k[layer, :n_batch, :, start:end] = k
        cache.self_v[layer, :n_batch, :, start:end] = v
        keys = cache.self_k[layer, :n_batch, :, :end]
        values = cache.self_v[layer, :n_batch, :, :end]
        x = x + self.attn.merge(F.scaled_dot_product_attention(q, keys, values, attn_mask=mask))

        q = split_heads(self.cross_attn.q(self.cross_attn_ln(x)), 1, self.cross_attn.n_head)[0]
        ck, cv = cache.cross_k[layer], cache.cross_v[layer]
        if ck.shape[0] == n_batch:
            attended = F.scaled_dot_product_attention(q, ck, cv)
        else:
            # One audio for every row (beams, a draft's rows): fold the rows into the query axis, so the
            # window's keys/values (6 MB a layer for base) are read once, not once per row: a plain beam
            # step (5 rows) of base took 33 ms here against 19 ms for a greedy one, 25-27 ms with this.
            # No mask: the rows stay independent.
            _, n_head, n_new, d_head = q.shape
            folded = q.transpose(0, 1).reshape(1, n_head, n_batch * n_new, d_head)
            attended = F.scaled_dot_product_attention(folded, ck, cv)
            attended = attended.view(n_head, n_batch, n_new, d_head).transpose(0, 1)
        x = x + self.cross_attn.out(attended.transpose(1, 2).reshape(x.shape))
        return x + self.fc2(F.gelu(self.fc1(self.mlp_ln(x))))


class TextDecoder(nn.Module):
    head: Tensor | None  # see pack_head()

    def __init__(self, dims: ModelDims) -> None:
        super().__init__()
        d = dims.n_text_state
        self.dims = dims
        # No random init (a loader assigns the weights): drawing 26M normals costs ~1 s, even on "meta".
        self.token_embedding = nn.Embedding(dims.n_vocab, d, _weight=torch.empty(dims.n_vocab, d))
        self.positional_embedding = nn.Parameter(torch.zeros(dims.n_text_ctx, d))
        self.blocks = nn.ModuleList(DecoderBlock(d, dims.n_text_head) for _ in range(dims.n_text_layer))
        self.ln = nn.LayerNorm(d)
        # The vocabulary head, derived from the embedding by pack_head(); kept out of the module registry.
        self.__dict__["head"] = None

    def prepare_for_inference(self) -> None:
        """Lay the decoder's weights out for fast single-row products, and pack the vocabulary head.

        On the CPU, a decoding step multiplies one row (or k + 1 rows) by each weight: MKL's product is
        faster here, by ~10% per step, when the weight is stored input-major (the transpose contiguous); the
        parameter keeps its shape and values, only its memory layout changes.
        """
        if self.positional_embedding.device.type == "cpu":
            for module in self.blocks.modules():
                if isinstance(module, nn.Linear):
                    module.weight = nn.Parameter(
                        module.weight.detach().t().contiguous().t(), requires_grad=False
                    )
        self.pack_head()

    def pack_head(self, dtype: torch.dtype | None = None) -> None:
        """Prepare the vocabulary head (tied to the token embedding); again after changing the embedding.

        The head (n_vocab x d, 106 MB for base in fp32) is read whole on every step: ~45% of a step. On the
        CPU it goes through oneDNN's GEMM, ~3x faster here than the default kernel (5 ms vs 15 ms for one
        token of base on 2 cores, 10 ms vs 30 ms for six), with the same arithmetic. A draft may use a
        cheaper `dtype`: the target verifies every token.
        """
        weight = self.token_embedding.weight.detach()
        weight = weight.to(dtype or weight.dtype).contiguous()
        mkldnn_dtypes = (torch.float32, torch.bfloat16)
        if (
            weight.device.type == "cpu"
            and weight.dtype in mkldnn_dtypes
            and torch.backends.mkldnn.is_available()
        ):
            weight = weight.to_mkldnn()
        self.__dict__["head"] = weight

    def project(self, x: Tensor) -> Tensor:
        """Logits from final hidden states. x: shape = (..., d) -> shape = (..., n_vocab), float32."""
        head = self.head if self.head is not None else self.token_embedding.weight
        rows = x.reshape(-1, x.shape[-1])
        if head.is_mkldnn:
            logits = torch.ops.aten.mkldnn_linear(rows.to(head.dtype).to_mkldnn(), head, None).to_dense()
        else:
            logits = F.linear(rows.to(head.dtype), head)
        return logits.float().view(*x.shape[:-1], -1)

    def new_cache(self, audio_features: Tensor, n_batch: int) -> KVCache:
        """A cache for `n_batch` rows decoding against `audio_features` (shape = (1 or n_batch, n_ctx, d))."""
        cross = [cast(DecoderBlock, block).cross_attn.project_audio(audio_features) for block in self.blocks]
        return self.cache_with_cross([k for k, _ in cross], [v for _, v in cross], n_batch)

    def cache_with_cross(self, cross_k: list[Tensor], cross_v: list[Tensor], n_batch: int) -> KVCache:
        """A cache reading cross-attention keys/values from elsewhere (a self-draft reads the target's)."""
        dims = self.dims
        return KVCache(
            n_layer=dims.n_text_layer,
            n_batch=n_batch,
            n_head=dims.n_text_head,
            d_head=dims.n_text_state // dims.n_text_head,
            n_ctx=dims.n_text_ctx,
            cross_k=list(cross_k),
            cross_v=list(cross_v),
            dtype=self.positional_embedding.dtype,
            device=self.positional_embedding.device,
        )

    def forward(self, tokens: Tensor, cache: KVCache, mask: Tensor | None = None) -> Tensor:
        """Logits for every new position, appending their keys/values to the cache.

        tokens: shape = (n_batch, n_new), the positions after cache.length.
        mask: optional boolean attention mask, shape = (n_new, cache.length + n_new); default causal.
        returns: shape = (n_batch, n_new, n_vocab), float32.
        """
        return self.project(self.hidden(tokens, cache, mask))

    def hidden(
        self,
        tokens: Tensor,
        cache: KVCache,
        mask: Tensor | None = None,
        positions: Tensor | None = None,
    ) -> Tensor:
        """Final hidden states (before the vocabulary head): shape = (n_batch, n_new, d). For callers that
        need logits at a few of the positions only: `project` those.

        A tree of proposals is fed flat: its nodes take the cache slots after cache.length, `positions`
        (shape = (n_batch, n_new)) gives each node its place in its sequence, and `mask` (shape =
        (n_batch, 1, n_new, cache.length + n_new)) lets a node see the cache and its own ancestors only.
        """
        n_new = tokens.shape[1]
        start, end = cache.reserve(n_new)
        if mask is None and n_new > 1:
            mask = causal_mask(start, n_new, tokens.device)
        if positions is None:
            x = self.token_embedding(tokens) + self.positional_embedding[start:end]
        else:
            x = self.token_embedding(tokens) + self.positional_embedding[positions]
        for layer, block in enumerate(self.blocks):
            x = block(x, cache, layer, start, end, mask)
        return self.ln(x)


def causal_mask(start: int, n_new: int, device: torch.device) -> Tensor:
    """shape = (n_new, start + n_new): new position i sees every cached position and new ones up to i."""
    cols = torch.arange(start + n_new, device=device)
    rows = torch.arange(start, start + n_new, device=device)
    return cols[None, :] <= rows[:, None]


class Whisper(nn.Module):
    def __init__(self, dims: ModelDims) -> None:
        super().__init__()
        self.dims = dims
        self.encoder = AudioEncoder(dims)
        self.decoder = TextDecoder(dims)

    @classmethod
    def from_state_dict(
        cls, sd: dict[str, Tensor], device: str | torch.device, dtype: torch.dtype
    ) -> Whisper:
        dims = ModelDims.from_state_dict(sd)
        with torch.device("meta"):
            model = cls(dims)
        weights = {k: v for k, v in sd.items() if not k.endswith(".n_head")}
        model.load_state_dict(weights, strict=True, assign=True)
        model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        model.decoder.prepare_for_inference()
        return model
