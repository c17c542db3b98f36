"""The self draft's greedy step as one native call (asr/draft_kernel.c), built at first use.

In PyTorch, a greedy step of the int8 self draft is ~300 small operations dispatched one by one, for a step
that reads little memory (~67 MB for base): dispatch, not arithmetic or memory, sets its pace. The C kernel
does the same step in one OpenMP region, near the time it takes to read those bytes (figures: README,
Speed). It is compiled once per machine with the C compiler found ($CC, else cc or gcc), cached beside the
converted weights, and loaded after torch so that it shares torch's OpenMP thread pool.

The kernel owns its calling convention: it names the slots of its pointer tables and dims in their order
(asr_draft_layout) and sizes its work space (asr_draft_work_size). Here each slot's name maps to a tensor
(or a dimension), and the tables are those in the kernel's order; a name this module does not know stops
the build, and the self draft then runs in PyTorch.

It needs AVX2 (x86-64 CPUs since 2013-2015) for its integer products; its portable loops, for other CPUs,
are slower than the PyTorch draft. So the self draft runs in PyTorch, as before, where the CPU lacks AVX2,
where the kernel cannot be built (no compiler, no OpenMP) or with `ASR_NATIVE_DRAFT=0`;
`ASR_NATIVE_DRAFT=1` uses the kernel whatever the CPU (to measure it elsewhere). Either way the transcript
is the same.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .kv_cache import KVCache
from .model import DecoderBlock, ModelDims, TextDecoder
from .weights import cache_dir

logger = logging.getLogger("asr")

SOURCE = Path(__file__).with_name("draft_kernel.c")
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC")
# The version of the kernel's exported signatures that the declarations in build() follow (asr_draft_abi).
ABI = 3
MAX_ROWS = 16  # draft_kernel.c's: the most rows asr_draft_step_rows takes
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
    native/) if built there before by the same compiler for the same CPU, else compiled now. Raises OSError
    if it does not match this module (asr_draft_abi, check_layout)."""
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
    if lib.asr_draft_abi() != ABI:
        raise OSError(f"{path} does not match this version of asr")
    lib.asr_draft_layout.restype = ctypes.c_int
    lib.asr_draft_layout.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.POINTER(ctypes.c_char_p))]
    lib.asr_draft_work_size.restype = ctypes.c_size_t
    lib.asr_draft_work_size.argtypes = [ctypes.c_void_p]
    lib.asr_draft_step.restype = None
    lib.asr_draft_step.argtypes = (
        [ctypes.c_void_p] * 3 + [ctypes.c_int] * 2 + [ctypes.c_void_p] * 2 + [ctypes.c_int]
    )
    lib.asr_draft_step_rows.restype = ctypes.c_int
    lib.asr_draft_step_rows.argtypes = (
        [ctypes.c_void_p] * 3 + [ctypes.c_int] + [ctypes.c_void_p] * 4 + [ctypes.c_int]
    )
    check_layout(layout(lib))
    return lib


@dataclass(frozen=True)
class Layout:
    """The kernel's tables as it names their slots, in its order (asr_draft_layout in draft_kernel.c)."""

    layer: tuple[str, ...]  # per decoder layer: its weights and a window's tensors (cache, cross keys/values)
    shared: tuple[str, ...]  # the weights all layers share
    dims: tuple[str, ...]  # the model's integers


def layout(lib: ctypes.CDLL) -> Layout:
    """The slot names the kernel `lib` exports, per table, in order."""

    def table(index: int) -> tuple[str, ...]:
        names = ctypes.POINTER(ctypes.c_char_p)()
        n = lib.asr_draft_layout(index, ctypes.byref(names))
        if n < 0:
            raise OSError(f"the native draft step has no table {index}")
        if any(names[i] is None for i in range(n)):
            raise OSError(f"the native draft step leaves a slot of table {index} unnamed")
        return tuple(names[i].decode() for i in range(n))

    return Layout(layer=table(0), shared=table(1), dims=table(2))


def check_layout(kernel: Layout) -> None:
    """Raise OSError (so that library() falls back to the PyTorch draft) if the kernel names a slot this
    module does not fill: a kernel newer than its Python side must not run on tables it misreads."""
    filled = _filled()
    unknown = [
        f"{table} {name!r}"
        for table in ("layer", "shared", "dims")
        for name in getattr(kernel, table)
        if name not in getattr(filled, table)
    ]
    if unknown:
        raise OSError(f"the native draft step names slots asr does not fill: {', '.join(unknown)}")


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


def _f32(t: Tensor) -> Tensor:
    t = t.detach()
    return (t.to_dense() if t.is_mkldnn else t).float().contiguous()


def _norm(name: str, norm: nn.LayerNorm) -> dict[str, Tensor]:
    return {f"{name}.weight": _f32(norm.weight), f"{name}.bias": _f32(norm.bias)}


Quantised = dict[str, Tensor]  # a layer's (or the shared) packed int8 weights and scales, by slot name


def _int8(
    name: str, weight: Tensor, bias: Tensor | None = None, cached: Quantised | None = None
) -> dict[str, Tensor]:
    """A linear layer's slots: its weights quantised (quantise_int8) and packed (pack_int8), their scales,
    and its biases (none for the head). `cached`: those packed weights and scales, made before."""
    if cached is not None:
        slots = {f"{name}.int8": cached[f"{name}.int8"], f"{name}.scale": cached[f"{name}.scale"]}
    else:
        q, scale = quantise_int8(_f32(weight))
        slots = {f"{name}.int8": pack_int8(q), f"{name}.scale": scale}
    if bias is not None:
        slots[f"{name}.bias"] = _f32(bias)
    return slots


def _linear(name: str, linear: nn.Linear, cached: Quantised | None) -> dict[str, Tensor]:
    bias = linear.bias if linear.bias is not None else torch.zeros(linear.weight.shape[0])
    return _int8(name, linear.weight, bias, cached)


def _layer_weights(block: DecoderBlock, cached: Quantised | None = None) -> dict[str, Tensor]:
    """A decoder layer's weights by the kernel's slot names (the target's own tensors where float32)."""
    return {
        **_norm("attn_ln", block.attn_ln),
        **_linear("attn.qkv", block.attn.qkv, cached),
        **_linear("attn.out", block.attn.out, cached),
        **_norm("cross_attn_ln", block.cross_attn_ln),
        **_linear("cross_attn.q", block.cross_attn.q, cached),
        **_linear("cross_attn.out", block.cross_attn.out, cached),
        **_norm("mlp_ln", block.mlp_ln),
        **_linear("fc1", block.fc1, cached),
        **_linear("fc2", block.fc2, cached),
    }


def _shared_weights(decoder: TextDecoder, cached: Quantised | None = None) -> dict[str, Tensor]:
    """The weights all layers share, by the kernel's slot names."""
    return {
        "token_embedding.weight": _f32(decoder.token_embedding.weight),
        "positional_embedding": _f32(decoder.positional_embedding),
        **_norm("ln", decoder.ln),
        # Whisper's head is its token embedding
        **_int8("head", decoder.token_embedding.weight, cached=cached),
    }


def _quantised(slots: dict[str, Tensor]) -> Quantised:
    """The slots made from the weights (packed int8 and scales), not read off the target."""
    return {k: v for k, v in slots.items() if k.endswith((".int8", ".scale"))}


def quantised_cache_path(weights_sha256: str) -> Path:
    """Where the self draft's packed int8 weights of the weights with this sha256 are cached.

    Named by all they derive from: the weights, this code (quantise_int8, pack_int8 and the kernel that
    reads their layout) and the CPU, so that a change in any of them makes a new file, never a stale read.
    """
    code = Path(__file__).read_bytes() + SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([weights_sha256.encode(), code, _cpu_signature().encode()]))
    return cache_dir() / "native" / f"self-draft-{weights_sha256[:16]}-{key.hexdigest()[:16]}.safetensors"


def _read_quantised(path: Path) -> dict[str, Tensor] | None:
    """The cached packed weights at `path` (memory-mapped), or None if absent or unreadable."""
    if not path.is_file():
        return None
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # a damaged file is rebuilt, never trusted
        logger.warning("cached draft weights %s are unreadable (%s); quantising again", path, exc)
        return None


def _write_quantised(path: Path, tables: dict[str, Quantised]) -> None:
    from .weights import write_safetensors_atomic

    flat = {f"{table}/{name}": tensor for table, slots in tables.items() for name, tensor in slots.items()}
    try:
        write_safetensors_atomic(flat, path, {"kind": "asr self draft, packed int8"})
    except OSError as exc:  # an unwritable cache: this run still has its weights
        logger.warning("cannot cache the draft's packed weights in %s (%s)", path, exc)


def _table(flat: dict[str, Tensor] | None, table: str) -> Quantised | None:
    if flat is None:
        return None
    prefix = f"{table}/"
    return {k.removeprefix(prefix): v for k, v in flat.items() if k.startswith(prefix)}


def _window_slots(
    layer: int, cache: KVCache, cross_kt: list[Tensor], cross_v: list[Tensor]
) -> dict[str, Tensor]:
    """A window's own tensors in a layer's table (NativeWindow's)."""
    return {
        "cross_kt": cross_kt[layer],
        "cross_v": cross_v[layer],
        "self_k": cache.self_k[layer, 0],
        "self_v": cache.self_v[layer, 0],
    }


# The model's integers by the kernel's names for them (its dims table).
DIMS: dict[str, Callable[[ModelDims], int]] = {
    "n_layer": lambda dims: dims.n_text_layer,
    "d_model": lambda dims: dims.n_text_state,
    "n_head": lambda dims: dims.n_text_head,
    "d_ff": lambda dims: 4 * dims.n_text_state,
    "n_vocab": lambda dims: dims.n_vocab,
    "n_audio_ctx": lambda dims: dims.n_audio_ctx,
    "n_ctx": lambda dims: dims.n_text_ctx,
}


@functools.cache
def _filled() -> Layout:
    """The names this module fills, per table, read off the functions above for a one-layer toy decoder (a
    few kB, built once): those functions stay the only list of them here. The order is not Python's to say."""
    toy = TextDecoder(
        ModelDims(
            n_mels=1,
            n_audio_ctx=1,
            n_audio_state=1,
            n_audio_head=1,
            n_audio_layer=1,
            n_vocab=1,
            n_text_ctx=1,
            n_text_state=1,
            n_text_head=1,
            n_text_layer=1,
        )
    )
    block = toy.blocks[0]
    assert isinstance(block, DecoderBlock)
    window = _window_slots(0, toy.cache_with_cross([], [], 1), [torch.empty(0)], [torch.empty(0)])
    return Layout(
        layer=(*_layer_weights(block), *window),
        shared=tuple(_shared_weights(toy)),
        dims=tuple(DIMS),
    )


class NativeDraft:
    """The self draft of a target decoder for draft_kernel.c: its linear layers and vocabulary head in int8
    (quantise_int8, packed by pack_int8), the rest (embeddings, layer norms) read from the target itself.

    Read-only once built: drafters decoding at the same time each bring their own cache (NativeWindow).
    """

    def __init__(self, decoder: TextDecoder, lib: ctypes.CDLL, cache: Path | None = None) -> None:
        """`cache`: a file for the packed int8 weights (quantised_cache_path): read if there, else written
        (quantising and packing base's took 0.2-0.7 s of every start-up; mapping them takes milliseconds)."""
        self.lib = lib
        self.layout = layout(lib)
        check_layout(self.layout)
        self.n_vocab = decoder.dims.n_vocab
        dims = [DIMS[name](decoder.dims) for name in self.layout.dims]
        self.dims = (ctypes.c_int * len(dims))(*dims)
        self.work_size: int = lib.asr_draft_work_size(self.dims)
        cached = _read_quantised(cache) if cache is not None else None
        # these hold every tensor the pointer tables point into (the target's own where it is float32)
        self.layers: list[dict[str, Tensor]] = []
        for i, block in enumerate(decoder.blocks):
            assert isinstance(block, DecoderBlock)
            self.layers.append(_layer_weights(block, _table(cached, f"layer{i}")))
        shared = _shared_weights(decoder, _table(cached, "shared"))
        if cache is not None and cached is None:
            tables = {f"layer{i}": _quantised(slots) for i, slots in enumerate(self.layers)}
            _write_quantised(cache, {**tables, "shared": _quantised(shared)})
        self.globals = [shared[name] for name in self.layout.shared]
        self.global_table = _pointers(self.globals)

    def window(
        self,
        cache: KVCache,
        cross_k: list[Tensor],
        cross_v: list[Tensor],
        like: NativeWindow | None = None,
    ) -> NativeWindow:
        """A window's state: `cache` (one row, float32) and the window's cross-attention keys/values (per
        layer, shape = (1, n_head, n_audio_ctx, d_head), any float dtype); `like`: another row's state for
        the same window, whose copies of the keys/values this one shares."""
        return NativeWindow(self, cache, cross_k, cross_v, like)


class NativeWindow:
    """One drafter's window: the kernel's copies of the cross-attention keys/values (bf16, keys transposed),
    the pointer table into them and into the drafter's cache, and the kernel's work space."""

    def __init__(
        self,
        draft: NativeDraft,
        cache: KVCache,
        cross_k: list[Tensor],
        cross_v: list[Tensor],
        like: NativeWindow | None = None,
    ) -> None:
        if cache.n_batch != 1 or cache.self_k.dtype != torch.float32 or not cache.self_k.is_contiguous():
            raise ValueError("the native draft step decodes one float32 row")
        self.draft, self.cache = draft, cache
        self.cross_kt: list[Tensor]
        self.cross_v: list[Tensor]
        if like is not None:
            self.cross_kt, self.cross_v = like.cross_kt, like.cross_v
        else:
            # keys transposed to (n_head, d_head, n_audio_ctx): a query's scores are then sums of rows
            self.cross_kt = [k[0].transpose(-1, -2).to(torch.bfloat16).contiguous() for k in cross_k]
            self.cross_v = [v[0].to(torch.bfloat16).contiguous() for v in cross_v]
        table: list[Tensor] = []
        for layer, weights in enumerate(draft.layers):
            slots = {**weights, **_window_slots(layer, cache, self.cross_kt, self.cross_v)}
            table += [slots[name] for name in draft.layout.layer]
        self.table = _pointers(table)
        self.work = torch.empty(draft.work_size)
        self.logits = torch.empty(1, draft.n_vocab)

    @staticmethod
    def feed_rows(windows: list[NativeWindow], tokens: list[int]) -> Tensor:
        """One token for each of several rows of one window (their states made with `like`), in one call
        that reads the weights once: the next-token logits, shape = (len(windows), n_vocab), a new tensor;
        row r's are bit for bit what windows[r].feed([tokens[r]]) gives."""
        draft = windows[0].draft
        n = len(windows)
        if not 1 <= n <= MAX_ROWS or len(tokens) != n:
            raise ValueError(f"feed_rows takes 1 to {MAX_ROWS} windows and a token each")
        if any(w.draft is not draft or w.cross_kt is not windows[0].cross_kt for w in windows):
            raise ValueError("feed_rows takes rows of one window (made with like=)")
        for token in tokens:
            if not 0 <= token < draft.n_vocab:
                raise ValueError(f"token {token} is outside the vocabulary")
        logits = torch.empty(n, draft.n_vocab)
        positions = [w.cache.reserve(1)[0] for w in windows]
        pointers = ctypes.c_void_p * n
        status = draft.lib.asr_draft_step_rows(
            pointers(*(ctypes.addressof(w.table) for w in windows)),
            draft.global_table,
            draft.dims,
            n,
            (ctypes.c_int * n)(*tokens),
            (ctypes.c_int * n)(*positions),
            pointers(*(logits[r].data_ptr() for r in range(n))),
            pointers(*(w.work.data_ptr() for w in windows)),
            torch.get_num_threads(),
        )
        if status != 0:
            raise RuntimeError(f"the native draft step refused {n} rows")
        return logits

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
