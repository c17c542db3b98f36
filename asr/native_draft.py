"""The self draft's greedy step as one native call (asr/draft_kernel.c), built at first use.

In PyTorch, a greedy step of base's int8 self draft is ~300 small operations dispatched one by one: 6.5-7.7 ms
on 2 cores, for a step that reads ~67 MB (2.2 ms at this machine's ~30 GB/s). The C kernel does the same step
in one OpenMP region, in 2.1-2.7 ms. It is compiled once per machine with the C compiler found ($CC, else cc
or gcc), cached beside the converted weights, and loaded after torch so that it shares torch's OpenMP thread
pool.

It needs AVX2 (x86-64 CPUs since 2013-2015) for its integer products; its portable loops, for other CPUs,
take 13.6-18.9 ms a step of base here, more than the PyTorch draft's 6.5-7.7 ms. So the self draft runs in
PyTorch, as before, where the CPU lacks AVX2, where the kernel cannot be built (no compiler, no OpenMP) or
with `ASR_NATIVE_DRAFT=0`; `ASR_NATIVE_DRAFT=1` uses the kernel whatever the CPU (to measure it elsewhere).
Either way the transcript is the same.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from .kv_cache import KVCache
from .model import DecoderBlock, TextDecoder
from .weights import cache_dir

logger = logging.getLogger("asr")

SOURCE = Path(__file__).with_name("draft_kernel.c")
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC")
# The kernel's table sizes (asr_draft_abi in draft_kernel.c): pointers per layer, global pointers, dims.
N_LAYER_PTRS, N_GLOBAL_PTRS, N_DIMS = 28, 6, 7
GROUP = 16  # rows per packed group (draft_kernel.c)

_LOCK = threading.Lock()
_LIBRARY: ctypes.CDLL | None = None
_TRIED = False


def _cpu_signature() -> str:
    """What -march=native depends on: a cache shared between machines must not hand one's build to another."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f if line.startswith(("model name", "flags", "Features"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


def _compile(compiler: str, flags: Sequence[str], output: Path) -> None:
    """Compile SOURCE into `output`, atomically (a temp file beside it, then a rename)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
    os.close(fd)
    try:
        command = [compiler, *flags, "-o", tmp, str(SOURCE), "-lm"]
        subprocess.run(command, check=True, capture_output=True, text=True, timeout=120)
        os.replace(tmp, output)
    finally:
        Path(tmp).unlink(missing_ok=True)


def build(flags: Sequence[str] | None = None, directory: Path | None = None) -> ctypes.CDLL:
    """The kernel compiled with `flags` (default FLAGS) and loaded: from `directory` (default: the cache's
    native/) if built there before by the same compiler for the same CPU, else compiled now (~1 s)."""
    flags = FLAGS if flags is None else flags
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        raise OSError("no C compiler (set CC, or install gcc)")
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    key = hashlib.sha256(
        "\0".join([SOURCE.read_text(), " ".join(flags), version, _cpu_signature()]).encode()
    ).hexdigest()[:16]
    name = f"draft_kernel-{key}.so"
    path = (directory or cache_dir() / "native") / name
    if not path.is_file():
        try:
            _compile(compiler, flags, path)
        except OSError:  # an unwritable cache (permissions, read-only, full): build for this process only
            path = Path(tempfile.mkdtemp(prefix="asr-native-")) / name
            _compile(compiler, flags, path)
        logger.info("built the native draft step: %s", path)
    lib = ctypes.CDLL(str(path))
    abi = (N_LAYER_PTRS << 16) | (N_GLOBAL_PTRS << 8) | N_DIMS
    if lib.asr_draft_abi() != abi:
        raise OSError(f"{path} does not match this version of asr")
    lib.asr_draft_step.restype = None
    lib.asr_draft_step.argtypes = (
        [ctypes.c_void_p] * 3 + [ctypes.c_int] * 2 + [ctypes.c_void_p] * 2 + [ctypes.c_int]
    )
    return lib


def library() -> ctypes.CDLL | None:
    """The compiled kernel, or None where it cannot be had (the reason is logged once)."""
    global _LIBRARY, _TRIED
    with _LOCK:
        if not _TRIED:
            _TRIED = True
            setting = os.environ.get("ASR_NATIVE_DRAFT", "")
            if setting == "0":
                logger.info("native draft step disabled (ASR_NATIVE_DRAFT=0)")
            else:
                try:
                    lib = build()
                except (OSError, subprocess.SubprocessError) as exc:
                    detail = getattr(exc, "stderr", None) or str(exc)
                    logger.warning(
                        "native draft step unavailable, the self draft runs in PyTorch (slower): %s",
                        detail.strip().splitlines()[-1] if detail.strip() else type(exc).__name__,
                    )
                else:
                    if lib.asr_draft_fast() or setting == "1":
                        _LIBRARY = lib
                    else:
                        logger.info(
                            "this CPU has no AVX2: the self draft runs in PyTorch, faster here than the "
                            "native step's portable loops (ASR_NATIVE_DRAFT=1 forces them)"
                        )
        return _LIBRARY


def pack_int8(weight: Tensor) -> Tensor:
    """An int8 matrix (shape = (n_out, n_in)) in the kernel's layout: groups of 16 rows, each as 64-byte
    blocks of 4 inputs of its 16 rows; zero-padded to whole groups and to a multiple of 4 blocks."""
    n_out, n_in = weight.shape
    n_in4 = (n_in + 15) // 16 * 4  # 4-input blocks, a multiple of 4 of them
    n_groups = -(-n_out // GROUP)
    padded = torch.zeros(n_groups * GROUP, n_in4 * 4, dtype=torch.int8)
    padded[:n_out, :n_in] = weight
    return padded.view(n_groups, GROUP, n_in4, 4).permute(0, 2, 1, 3).contiguous()


def _pointers(tensors: list[Tensor]) -> ctypes.Array:
    return (ctypes.c_void_p * len(tensors))(*(t.data_ptr() for t in tensors))


def quantise_int8(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric int8 weights with one float32 scale per output row: weight ~ q * scale[:, None]."""
    weight = weight.detach().float()
    scale = weight.abs().amax(dim=1).clamp_min(1e-12) / 127
    return (weight / scale[:, None]).round().to(torch.int8), scale


class NativeDraft:
    """The self draft of a target decoder for draft_kernel.c: its linear layers and vocabulary head in int8
    (quantise_int8, packed by pack_int8), the rest (embeddings, layer norms) read from the target itself.

    Read-only once built: drafters decoding at the same time each bring their own cache (NativeWindow).
    """

    def __init__(self, decoder: TextDecoder, lib: ctypes.CDLL) -> None:
        self.lib = lib
        dims = decoder.dims
        self.n_vocab = dims.n_vocab
        self.dims = (ctypes.c_int * N_DIMS)(
            dims.n_text_layer,
            dims.n_text_state,
            dims.n_text_head,
            4 * dims.n_text_state,
            dims.n_vocab,
            dims.n_audio_ctx,
            dims.n_text_ctx,
        )
        # x, h, qkv (3 d), att, the MLP's hidden (4 d), and one row of scores per head
        self.work_size = 10 * dims.n_text_state + dims.n_text_head * max(dims.n_audio_ctx, dims.n_text_ctx)

        def f32(t: Tensor) -> Tensor:
            t = t.detach()
            return (t.to_dense() if t.is_mkldnn else t).float().contiguous()

        def int8(linear: nn.Linear) -> list[Tensor]:
            weight = f32(linear.weight)
            bias = linear.bias if linear.bias is not None else torch.zeros(weight.shape[0])
            q, scale = quantise_int8(weight)
            return [pack_int8(q), scale, f32(bias)]

        # these lists hold every tensor the pointer tables point into (the target's own where it is float32)
        self.layers: list[list[Tensor]] = []
        for block in decoder.blocks:
            assert isinstance(block, DecoderBlock)
            self.layers.append(
                [
                    f32(block.attn_ln.weight),
                    f32(block.attn_ln.bias),
                    *int8(block.attn.qkv),
                    *int8(block.attn.out),
                    f32(block.cross_attn_ln.weight),
                    f32(block.cross_attn_ln.bias),
                    *int8(block.cross_attn.q),
                    *int8(block.cross_attn.out),
                    f32(block.mlp_ln.weight),
                    f32(block.mlp_ln.bias),
                    *int8(block.fc1),
                    *int8(block.fc2),
                ]
            )
        head, head_scale = quantise_int8(decoder.token_embedding.weight)
        self.globals = [
            f32(decoder.token_embedding.weight),
            f32(decoder.positional_embedding),
            f32(decoder.ln.weight),
            f32(decoder.ln.bias),
            pack_int8(head),
            head_scale,
        ]
        self.global_table = _pointers(self.globals)

    def window(self, cache: KVCache, cross_k: list[Tensor], cross_v: list[Tensor]) -> NativeWindow:
        """A window's state: `cache` (one row, float32) and the window's cross-attention keys/values (per
        layer, shape = (1, n_head, n_audio_ctx, d_head), any float dtype)."""
        return NativeWindow(self, cache, cross_k, cross_v)


class NativeWindow:
    """One drafter's window: the kernel's copies of the cross-attention keys/values (bf16, keys transposed),
    the pointer table into them and into the drafter's cache, and the kernel's work space."""

    def __init__(
        self, draft: NativeDraft, cache: KVCache, cross_k: list[Tensor], cross_v: list[Tensor]
    ) -> None:
        if cache.n_batch != 1 or cache.self_k.dtype != torch.float32 or not cache.self_k.is_contiguous():
            raise ValueError("the native draft step decodes one float32 row")
        self.draft, self.cache = draft, cache
        # keys transposed to (n_head, d_head, n_audio_ctx): a query's scores are then sums of rows
        self.cross_kt = [k[0].transpose(-1, -2).to(torch.bfloat16).contiguous() for k in cross_k]
        self.cross_v = [v[0].to(torch.bfloat16).contiguous() for v in cross_v]
        table: list[Tensor] = []
        for layer, weights in enumerate(draft.layers):
            table += weights
            table += [
                self.cross_kt[layer],
                self.cross_v[layer],
                cache.self_k[layer, 0],
                cache.self_v[layer, 0],
            ]
        self.table = _pointers(table)
        self.work = torch.empty(draft.work_size)
        self.logits = torch.empty(1, draft.n_vocab)

    def feed(self, tokens: list[int]) -> Tensor:
        """Feed `tokens` after the cache's positions; the next-token logits, shape = (1, n_vocab). The
        returned tensor is reused by the next call."""
        draft = self.draft
        if not tokens:
            raise ValueError("feed at least one token")
        for i, token in enumerate(tokens):
            if not 0 <= token < draft.n_vocab:
                raise ValueError(f"token {token} is outside the vocabulary")
            position, _ = self.cache.reserve(1)
            logits = self.logits.data_ptr() if i == len(tokens) - 1 else None
            draft.lib.asr_draft_step(
                self.table,
                draft.global_table,
                draft.dims,
                token,
                position,
                logits,
                self.work.data_ptr(),
                torch.get_num_threads(),
            )
        return self.logits
