"""Whisper as lean PyTorch modules: fused projections, a static KV cache, no per-step bookkeeping.

Weights come from the bundled CTranslate2 files (asr/weights.py) or from a transformers checkpoint
(asr/models.py maps its names onto these). The math is Whisper's: pre-norm residual blocks, exact GELU,
sinusoidal encoder positions and learned decoder positions, a vocabulary head tied to the token embedding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeGuard, cast

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


DECODER_ROWS = 16  # the row count decoder weights are packed for: a step feeds 1 to a few hundred rows


def packable(weight: Tensor) -> bool:
    """Whether oneDNN can hold `weight` in its blocked layout here (a CPU; fp32, or bf16 where supported)."""
    if weight.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    if weight.dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return weight.dtype == torch.float32


def pack_weight(weight: Tensor, rows: int) -> Tensor:
    """`weight` (shape = (n_out, n_in)) in oneDNN's blocked layout for products of about `rows` rows.

    Same values (`to_dense()` gives them back), other memory order. A decoding step multiplies one row, or a
    few (a verification pass, beams), by weights far larger than the cache: what counts is reading them at
    full memory speed, which oneDNN's packed kernel does and the default GEMM does not (a greedy step, a
    verification pass and a beam step all got faster; the README's speed section has the figures). Any
    hint of 4 or more gave the same speed for 1 to 150 rows; a hint of 1 was slow for more.
    """
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), rows)


def packed_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x @ weight.T + bias for a weight from pack_weight(); x: shape = (..., n_in)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class Linear(nn.Linear):
    """nn.Linear whose weight may be packed for oneDNN (see pack_weight). state_dict() gives it dense, and
    load_state_dict() packs what it loads."""

    rows = 0  # the hint it was packed for; 0: not packed

    def pack(self, rows: int) -> None:
        if packable(self.weight) and not self.weight.is_mkldnn:
            self.weight = nn.Parameter(pack_weight(self.weight, rows), requires_grad=False)
            self.rows = rows

    def forward(self, x: Tensor) -> Tensor:
        if self.weight.is_mkldnn:
            return packed_linear(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if destination[prefix + "weight"].is_mkldnn:
            destination[prefix + "weight"] = destination[prefix + "weight"].to_dense()

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: object) -> None:
        if self.weight.is_mkldnn:
            self.weight = nn.Parameter(self.weight.to_dense(), requires_grad=False)
        super()._load_from_state_dict(state_dict, prefix, *args)
        if self.rows:
            self.pack(self.rows)


def is_packed(layer: nn.Module) -> TypeGuard[Linear]:
    """Whether `layer` is a Linear whose weight is packed for oneDNN (a draft's cheaper layers are not)."""
    return isinstance(layer, Linear) and layer.weight.is_mkldnn


def linear_gelu(layer: nn.Module, x: Tensor) -> Tensor:
    """gelu(layer(x)). A packed Linear applies the (exact, erf) GELU in oneDNN's epilogue: the same values,
    without another pass over the result (an encoder layer's is 1500 x 2048 floats)."""
    if is_packed(layer):
        return torch.ops.mkldnn._linear_pointwise(x, layer.weight, layer.bias, "gelu", [], "none")
    return F.gelu(layer(x))


def linear_add(layer: nn.Module, x: Tensor, residual: Tensor) -> Tensor:
    """residual + layer(x); a packed Linear adds the residual in oneDNN's epilogue (the same values)."""
    # the epilogue neither casts nor broadcasts the residual
    fusable = is_packed(layer) and residual.dtype == x.dtype
    if fusable and residual.shape == (*x.shape[:-1], layer.out_features):
        return torch.ops.mkldnn._linear_pointwise.binary(x, residual, layer.weight, layer.bias, "add")
    return residual + layer(x)


def split_heads(x: Tensor, n_parts: int, n_head: int) -> Tensor:
    """x: shape = (n_batch, n_ctx, n_parts * d) -> shape = (n_parts, n_batch, n_head, n_ctx, d_head)."""
    n_batch, n_ctx, width = x.shape
    return x.view(n_batch, n_ctx, n_parts, n_head, width // (n_parts * n_head)).permute(2, 0, 3, 1, 4)


class SelfAttention(nn.Module):
    def __init__(self, d: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.qkv = Linear(d, 3 * d)  # fused q, k, v
        self.out = Linear(d, d)

    def split(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys, values, each shape = (n_batch, n_head, n_ctx, d_head)."""
        q, k, v = split_heads(self.qkv(x), 3, self.n_head)
        return q, k, v

    def merge(self, x: Tensor, residual: Tensor) -> Tensor:
        """residual + the output projection of the heads x (shape = (n_batch, n_head, n_ctx, d_head))."""
        n_batch, _, n_ctx, _ = x.shape
        return linear_add(self.out, x.transpose(1, 2).reshape(n_batch, n_ctx, -1), residual)


class EncoderBlock(nn.Module):
    def __init__(self, d: int, n_head: int) -> None:
        super().__init__()
        self.attn_ln = nn.LayerNorm(d)
        self.attn = SelfAttention(d, n_head)
        self.mlp_ln = nn.LayerNorm(d)
        self.fc1 = Linear(d, 4 * d)
        self.fc2 = Linear(4 * d, d)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.attn.split(self.attn_ln(x))
        x = self.attn.merge(F.scaled_dot_product_attention(q, k, v), x)
        return linear_add(self.fc2, linear_gelu(self.fc1, self.mlp_ln(x)), x)


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
        self.q = Linear(d, d)
        self.kv = Linear(d, 2 * d)  # fused k, v (Whisper's k has no bias: zero here)
        self.out = Linear(d, d)

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
        self.fc1 = Linear(d, 4 * d)
        self.fc2 = Linear(4 * d, d)

    def forward(
        self, x: Tensor, cache: KVCache, layer: int, start: int, end: int, mask: Tensor | None
    ) -> Tensor:
        n_batch = x.shape[0]
        q, k, v = self.attn.split(self.attn_ln(x))
        cache.self_k[layer, :n_batch, :, start:end] = k
        cache.self_v[layer, :n_batch, :, start:end] = v
        keys = cache.self_k[layer, :n_batch, :, :end]
        values = cache.self_v[layer, :n_batch, :, :end]
        x = self.attn.merge(F.scaled_dot_product_attention(q, keys, values, attn_mask=mask), x)

        q = split_heads(self.cross_attn.q(self.cross_attn_ln(x)), 1, self.cross_attn.n_head)[0]
        attended = cross_attend(q, cache.cross_k[layer], cache.cross_v[layer])
        x = linear_add(self.cross_attn.out, attended.transpose(1, 2).reshape(x.shape), x)
        return linear_add(self.fc2, linear_gelu(self.fc1, self.mlp_ln(x)), x)


def cross_attend(q: Tensor, ck: Tensor, cv: Tensor) -> Tensor:
    """Attention of the new positions over the window's audio. q: shape = (n_batch, n_head, n_new, d_head);
    ck, cv: shape = (1 or n_batch, n_head, n_audio_ctx, d_head)."""
    n_batch, n_head, n_new, d_head = q.shape
    if ck.shape[0] != n_batch:
        # One audio for every row (beams, a draft's rows): fold the rows into the query axis, so the
        # window's keys/values (6 MB a layer for base) are read once, not once per row, which made a
        # plain beam step markedly cheaper. No mask: the rows stay independent.
        folded = q.transpose(0, 1).reshape(1, n_head, n_batch * n_new, d_head)
        return cross_attend(folded, ck, cv).view(n_head, n_batch, n_new, d_head).transpose(0, 1)
    if ck.dtype != q.dtype:
        # A draft's cheaper copy of the keys/values (bf16: half the bytes of the largest thing a step reads
        # after the weights). Plain products: the CPU's fused attention was slower in bf16 than in fp32,
        # and two bf16 products faster than either.
        weights = torch.softmax((q * d_head**-0.5).to(ck.dtype) @ ck.transpose(-1, -2), dim=-1)
        return (weights @ cv).to(q.dtype)
    return F.scaled_dot_product_attention(q, ck, cv)


CrossKV = tuple[list[Tensor], list[Tensor]]  # per layer: cross-attention keys, values


class TextDecoder(nn.Module):
    head: nn.Module | None  # see pack_head()

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
        """Pack the block weights and the vocabulary head for fast few-row products (see pack_weight)."""
        for module in self.blocks.modules():
            if isinstance(module, Linear):
                module.pack(DECODER_ROWS)
        self.pack_head()

    def pack_head(self) -> None:
        """Build the vocabulary head (tied to the token embedding); again after changing the embedding.

        The head (n_vocab x d, 106 MB for base in fp32) is read whole on every step: about a third of a step.
        On the CPU it is packed for oneDNN (pack_weight). A draft sets a cheaper head of its own (set_head).
        """
        weight = self.token_embedding.weight.detach()
        head = Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
        head.weight = nn.Parameter(weight, requires_grad=False)
        head.pack(DECODER_ROWS)
        self.set_head(head)

    def set_head(self, head: nn.Module | None) -> None:
        """Use `head` (hidden states -> logits) as the vocabulary head, kept out of the module registry;
        None: a plain product with the token embedding."""
        self.__dict__["head"] = head

    def project(self, x: Tensor) -> Tensor:
        """Logits from final hidden states. x: shape = (..., d) -> shape = (..., n_vocab), float32."""
        if self.head is None:
            return F.linear(x, self.token_embedding.weight).float()
        return self.head(x).float()

    def project_audio(self, audio_features: Tensor) -> CrossKV:
        """Every layer's cross-attention keys/values for `audio_features` (shape = (1 or n_batch, n_ctx, d)):
        the window's one costly projection, shared by all that decodes the window."""
        cross = [cast(DecoderBlock, block).cross_attn.project_audio(audio_features) for block in self.blocks]
        return [k for k, _ in cross], [v for _, v in cross]

    def new_cache(self, audio_features: Tensor, n_batch: int, cross: CrossKV | None = None) -> KVCache:
        """A cache for `n_batch` rows decoding against `audio_features` (shape = (1 or n_batch, n_ctx, d));
        `cross`: its projection, when already made (project_audio)."""
        cross_k, cross_v = cross if cross is not None else self.project_audio(audio_features)
        return self.cache_with_cross(cross_k, cross_v, n_batch)

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
        model.prepare_for_inference()
        return model

    def prepare_for_inference(self) -> None:
        """Lay the weights out for inference on this device (on a CPU: packed for oneDNN, see pack_weight).
        Change no weight afterwards: the packed copies would not follow."""
        for module in self.encoder.modules():
            if isinstance(module, Linear):
                module.pack(self.dims.n_audio_ctx)
        self.decoder.prepare_for_inference()
