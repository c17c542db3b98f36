"""Drafters by name: `--draft none`, `self`, or a model name, built for a target.

A draft kind is one class (asr/drafting.py) plus one registration here (`@register_drafter(name)` on a
function that builds it for a target); any other name is loaded as a model. Heavy parts (a self draft's
quantised decoder, the native kernel's packed weights) are built once per target and shared, weakly keyed
by the target's modules; every call returns a drafter with its own cache.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable

import torch
from torch import nn

from .drafting import Drafter, ModelDrafter, NativeSelfDrafter, NoDraft, SelfDrafter
from .errors import IncompatibleModelsError, InvalidOptionError
from .model import TextDecoder
from .models import LoadedModel, load_model
from .native_draft import NativeDraft, quantised_cache_path
from .native_draft import library as native_library
from .quantised import self_draft_cross_dtype, self_draft_decoder, self_draft_dtype

DraftFactory = Callable[[LoadedModel, bool], Drafter]  # (target, batched) -> a new drafter
_FACTORIES: dict[str, DraftFactory] = {}


def register_drafter(name: str) -> Callable[[DraftFactory], DraftFactory]:
    """Make `--draft name` build a drafter with the decorated function."""

    def register(factory: DraftFactory) -> DraftFactory:
        _FACTORIES[name] = factory
        return factory

    return register


def draft_names() -> tuple[str, ...]:
    return tuple(_FACTORIES)


def make_drafter(spec: str, target: LoadedModel, batched: bool = False) -> Drafter:
    """The drafter named by `spec` (a registered name, or a model name) for `target`; `batched` picks
    the weights fit for proposing many rows at a time."""
    if spec in _FACTORIES:
        return _FACTORIES[spec](target, batched)
    if not spec:
        raise InvalidOptionError(f"draft must be {', '.join(map(repr, _FACTORIES))} or a model name")
    return _model_draft(spec, target)


@register_drafter("none")
def _no_draft(target: LoadedModel, batched: bool) -> Drafter:
    return NoDraft()


# Keyed by the target's modules, weakly: a model freed and another built at its address never share a draft.
_SELF_DECODERS: weakref.WeakKeyDictionary[nn.Module, dict[torch.dtype, TextDecoder]]
_SELF_DECODERS = weakref.WeakKeyDictionary()
_NATIVE_DRAFTS: weakref.WeakKeyDictionary[nn.Module, NativeDraft] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


@register_drafter("self")
def _self_draft(target: LoadedModel, batched: bool) -> Drafter:
    """A cheap copy of the target itself: the native step where it can run, else PyTorch modules."""
    eot = target.tokenizer.eot
    dtype = self_draft_dtype(target.device, batched)
    with _LOCK:
        # the kernel keeps the target's cache layout, float32 (a bf16 or fp16 target on a CPU drafts in
        # PyTorch)
        native_ok = dtype == torch.int8 and target.dtype == torch.float32
        if native_ok and (lib := native_library()) is not None:
            if target.model not in _NATIVE_DRAFTS:
                sha = target.weights_sha256
                cache = quantised_cache_path(sha) if sha is not None else None
                _NATIVE_DRAFTS[target.model] = NativeDraft(target.model.decoder, lib, cache)
            return NativeSelfDrafter("self", target.model.decoder, eot, _NATIVE_DRAFTS[target.model])
        decoders = _SELF_DECODERS.setdefault(target.model, {})
        if dtype not in decoders:
            decoders[dtype] = self_draft_decoder(target, dtype)
        decoder = decoders[dtype]
    return SelfDrafter("self", decoder, eot, cross_dtype=self_draft_cross_dtype(dtype))


def _model_draft(name: str, target: LoadedModel) -> Drafter:
    """Another model with the target's tokenizer; if its encoder is a copy of the target's, only its
    decoder runs, on the target's encoder output."""
    draft = load_model(name, device=target.device)
    check_compatible(draft, target)
    with _LOCK:
        encoder = None if _same_encoder(draft, target) else draft.model.encoder
    return ModelDrafter(name, draft.model.decoder, target.tokenizer.eot, encoder=encoder)


def check_compatible(draft: LoadedModel, target: LoadedModel) -> None:
    """A draft must speak the target's tokens: same vocabulary, same special tokens, same BPE."""
    a, b = draft.tokenizer, target.tokenizer
    if draft.dims.n_mels != target.dims.n_mels:
        raise IncompatibleModelsError(
            f"draft {draft.name!r} cannot draft for {target.name!r}: it reads {draft.dims.n_mels}-bin "
            f"log-mel input, the target {target.dims.n_mels}-bin"
        )
    same = (
        draft.dims.n_vocab == target.dims.n_vocab
        and (a.eot, a.sot, a.no_timestamps) == (b.eot, b.sot, b.no_timestamps)
        and a.bpe.get_vocab_size() == b.bpe.get_vocab_size()
        and a.encode(" The quick brown fox, 1999.") == b.encode(" The quick brown fox, 1999.")
    )
    if not same:
        raise IncompatibleModelsError(
            f"draft {draft.name!r} cannot draft for {target.name!r}: their tokenizers differ "
            f"(vocabularies of {draft.dims.n_vocab} and {target.dims.n_vocab} tokens); choose a draft "
            "with the target's tokenizer, or --draft self"
        )


_SAME_ENCODER: weakref.WeakKeyDictionary[nn.Module, weakref.WeakKeyDictionary[nn.Module, bool]]
_SAME_ENCODER = weakref.WeakKeyDictionary()


def _same_encoder(draft: LoadedModel, target: LoadedModel) -> bool:
    """Whether the draft's encoder is a copy of the target's (compared once per pair of loaded models)."""
    known = _SAME_ENCODER.setdefault(draft.model, weakref.WeakKeyDictionary())
    if target.model not in known:
        a, b = draft.model.encoder.state_dict(), target.model.encoder.state_dict()
        known[target.model] = a.keys() == b.keys() and all(
            a[k].shape == b[k].shape and torch.equal(a[k].to(b[k].dtype), b[k]) for k in a
        )
    return known[target.model]
