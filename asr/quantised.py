"""The self draft's cheap copies of the target's layers: int8 weights (Int8Linear) or fp16/bf16 weights
(CastLinear), and the decoder built from them (self_draft_decoder). Only the weights are cheapened: the
activations stay floating-point, which is what keeps the draft's choices the target's.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .model import DECODER_ROWS, Linear, TextDecoder
from .models import LoadedModel
from .native_draft import quantise_int8


class CastLinear(nn.Module):
    """A linear layer whose weights are stored in a cheaper dtype; float32 in, float32 out.

    On a CPU an fp16 product of one row runs several times faster than an fp32 one (half the bytes, and a
    better kernel); bf16 weights are packed for oneDNN like the target's, which matters for a beam draft's
    many rows. Whisper's released weights are fp16 to begin with: only the activations are rounded.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None, dtype: torch.dtype) -> None:
        super().__init__()
        # Output-major whatever the source's layout: fp16 products run far slower on a transposed one.
        self.linear = Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
        self.linear.weight = nn.Parameter(weight.detach().to(dtype).contiguous(), requires_grad=False)
        if bias is not None:
            self.linear.bias = nn.Parameter(bias.detach().to(dtype), requires_grad=False)
        self.linear.pack(DECODER_ROWS)
        self.dtype = dtype

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x.to(self.dtype)).to(x.dtype)


class Int8Linear(nn.Module):
    """A linear layer with int8 weights (one scale per output) and bf16 products; float32 in, float32 out.

    A quarter of fp32's bytes, and the CPU kernel reads them fast for a row or two: a greedy step of base's
    self draft ran faster than with fp16 weights, and 98% of its tokens were still the target's on 19
    English clips. Only the weights are quantised: the activations stay bf16 (quantising them too, as
    dynamic quantisation does, kept 69%; the README's speed section has the measurements).
    """

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        self.weight, scale = quantise_int8(weight)
        self.scale = scale.to(torch.bfloat16)
        self.bias = None if bias is None else bias.detach().to(torch.bfloat16)

    @staticmethod
    def supports(weight: Tensor) -> bool:
        # the CPU kernel needs an input width that is a multiple of 16 (it gives wrong results or crashes
        # otherwise, torch 2.13); every Whisper's is
        return weight.device.type == "cpu" and weight.shape[1] % 16 == 0

    def forward(self, x: Tensor) -> Tensor:
        rows = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
        y = torch.ops.aten._weight_int8pack_mm(rows, self.weight, self.scale)
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype).view(*x.shape[:-1], -1)


def cheap_linear(weight: Tensor, bias: Tensor | None, dtype: torch.dtype) -> nn.Module:
    """A draft's copy of a linear layer: int8 (Int8Linear) where the kernel allows it, else fp16/bf16."""
    if dtype == torch.int8:
        if Int8Linear.supports(weight):
            return Int8Linear(weight, bias)
        dtype = torch.float16
    return CastLinear(weight, bias, dtype)


def self_draft_decoder(target: LoadedModel, dtype: torch.dtype = torch.float16) -> TextDecoder:
    """A cheap copy of the target's decoder: linears and vocabulary head in `dtype` (int8, fp16 or bf16),
    the rest as in the target. Measured on 8 English clips with base: an fp16 or bf16 copy proposed only
    tokens the target accepted, where dynamic quantisation to int8 kept 69% and a head cut to the first 16k
    tokens 71% (ids do not follow English frequency)."""
    source = target.model.decoder
    with torch.device("meta"):
        decoder = TextDecoder(source.dims)
    decoder.load_state_dict({k: v.detach().clone() for k, v in source.state_dict().items()}, assign=True)
    decoder.eval().requires_grad_(False)
    for block in decoder.blocks:
        for owner, name in (
            (block.attn, "qkv"),
            (block.attn, "out"),
            (block.cross_attn, "q"),
            (block.cross_attn, "out"),
            (block, "fc1"),
            (block, "fc2"),
        ):
            linear = getattr(owner, name)
            setattr(owner, name, cheap_linear(linear.weight, linear.bias, dtype))
    decoder.set_head(cheap_linear(decoder.token_embedding.weight, None, dtype))
    return decoder


def self_draft_dtype(device: torch.device, batched: bool) -> torch.dtype:
    """The self draft's weight dtype. On a CPU, one greedy row: int8 weights (Int8Linear) with bf16
    cross-attention keys/values (faster than fp16 or bf16 weights for one row); a beam draft's rows: bf16,
    packed for oneDNN (fp16 products of many rows are slow on a CPU). A GPU: fp16. (Measured step times:
    the README's speed section.)"""
    if device.type != "cpu":
        return torch.float16
    return torch.bfloat16 if batched else torch.int8


def self_draft_cross_dtype(weights: torch.dtype) -> torch.dtype | None:
    """The dtype of the self draft's copy of the window's cross-attention keys/values (None: the
    target's own, shared): bf16 beside int8 weights, see model.cross_attend."""
    return torch.bfloat16 if weights == torch.int8 else None
