"""openai-whisper's `transcribe()`, the reference implementation, on our weights; where ours differs from it.

Shared by tests/test_reference_parity.py and benchmarks/reference_parity.py (issue #20). Needs the
`openai-whisper` package (`pip install --no-deps openai-whisper`: its triton dependency is for GPUs) with
numba, more-itertools and tiktoken (the test extra's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from asr.models import LoadedModel

# A token decided by a gap this small between two logits may flip with the order of float32 sums: a
# verification pass and a one-token step drift by up to ~1e-4 (benchmarks/logit_drift.py), two
# implementations of the same model by about as much.
FLOAT_RACE = 1e-3


def to_openai_whisper(m: LoadedModel):
    """The same weights in the `openai-whisper` package's model (float32, CPU), our names mapped to its.

    Used to compare our engine with its `transcribe`, the reference implementation (issue #20). Its attention
    splits our fused projections: `qkv` into query, key (no bias), value; the cross-attention's `kv` into
    key and value; `fc1` / `fc2` are its `mlp.0` / `mlp.2`."""
    import whisper.model

    sd = m.model.state_dict()
    d = m.dims
    out: dict[str, torch.Tensor] = {}

    def attention(dst: str, src: str, fused: str, names: str) -> None:
        weights = sd[f"{src}.{fused}.weight"].chunk(len(names))
        biases = sd[f"{src}.{fused}.bias"].chunk(len(names))
        for name, w, b in zip(names, weights, biases, strict=True):
            key = {"q": "query", "k": "key", "v": "value"}[name]
            out[f"{dst}.{key}.weight"] = w
            if name != "k":  # Whisper's key projections have no bias
                out[f"{dst}.{key}.bias"] = b

    for name, value in sd.items():
        if ".attn.qkv." in name or ".cross_attn.q." in name or ".cross_attn.kv." in name:
            continue
        out[name.replace(".fc1.", ".mlp.0.").replace(".fc2.", ".mlp.2.")] = value
    for stack, n_layer in (("encoder", d.n_audio_layer), ("decoder", d.n_text_layer)):
        for i in range(n_layer):
            block = f"{stack}.blocks.{i}"
            attention(f"{block}.attn", f"{block}.attn", "qkv", "qkv")
            if stack == "decoder":
                attention(f"{block}.cross_attn", f"{block}.cross_attn", "q", "q")
                attention(f"{block}.cross_attn", f"{block}.cross_attn", "kv", "kv")
    dims = whisper.model.ModelDimensions(**vars(d))
    reference = whisper.model.Whisper(dims)
    reference.load_state_dict({k: v.float() for k, v in out.items()}, strict=True)
    return reference.eval()


@dataclass
class Difference:
    """The first place two runs' window tokens differ, and how close the decision was there."""

    window: int
    position: int  # index into that window's sampled tokens
    ours: int | None  # None: that run's window ended (EOT) or it has no such window
    theirs: int | None
    gap_ours: float | None = None  # our logit(ours) - logit(theirs) at that position, same window and prefix
    gap_theirs: float | None = None  # the same in openai-whisper's model

    @property
    def is_float_race(self) -> bool:
        """Both models put the two tokens within FLOAT_RACE of each other: rounding decides, not the code."""
        gaps = (self.gap_ours, self.gap_theirs)
        return all(gap is not None and abs(gap) <= FLOAT_RACE for gap in gaps)

    def describe(self) -> str:
        gaps = ""
        if self.gap_ours is not None:
            gaps = f", logit gap ours {self.gap_ours:+.2e}, openai-whisper's {self.gap_theirs:+.2e}"
        return f"window {self.window}, token {self.position}: ours {self.ours}, openai {self.theirs}{gaps}"


@dataclass
class ReferenceRun:
    """openai-whisper's transcribe of one clip, and the inputs of every window it decoded."""

    text: str
    window_tokens: list[list[int]]
    window_mels: list[torch.Tensor]  # shape = (n_mels, N_FRAMES) each
    window_prompts: list[list[int]]


def reference_transcribe(reference: Any, samples: np.ndarray, language: str) -> ReferenceRun:
    """openai-whisper's `transcribe()` at temperature 0 (no fallback), fp32, keeping each window's inputs."""
    import whisper

    tokens: list[list[int]] = []
    mels: list[torch.Tensor] = []
    prompts: list[list[int]] = []
    decode = reference.decode

    def recording_decode(mel: torch.Tensor, options: Any) -> Any:
        result = decode(mel, options)
        tokens.append(list(result.tokens))
        mels.append(mel.clone())
        prompts.append(list(options.prompt or []))
        return result

    reference.decode = recording_decode
    try:
        out = whisper.transcribe(
            reference,
            samples,
            temperature=0.0,  # one value: no fallback (openai samples at random; ours is given 0 too)
            language=language,
            fp16=False,
            condition_on_previous_text=True,
            verbose=None,
        )
    finally:
        del reference.decode
    return ReferenceRun(out["text"], tokens, mels, prompts)


@torch.inference_mode()
def detected_languages(
    model: LoadedModel, reference: Any, samples: np.ndarray
) -> tuple[str, float, str, float]:
    """(ours, its probability, openai-whisper's, its probability): language detection on the first window,
    ours on the window we decode (the input's frames, then zeros), openai's on the first 30 s of the padded
    input's log-mel, as its `transcribe()` detects."""
    import whisper

    from asr.transcribe import transcribe_stream

    _, info = transcribe_stream(model, samples, draft="none")  # detects before it returns; decodes nothing
    mel = whisper.log_mel_spectrogram(torch.from_numpy(samples), 80, padding=whisper.audio.N_SAMPLES)
    _, probs = reference.detect_language(whisper.pad_or_trim(mel, whisper.audio.N_FRAMES))
    theirs = max(probs, key=probs.get)
    return info.language, info.language_probability, theirs, probs[theirs]


def first_difference(ours: list[list[int]], theirs: list[list[int]]) -> Difference | None:
    for w in range(max(len(ours), len(theirs))):
        a = ours[w] if w < len(ours) else []
        b = theirs[w] if w < len(theirs) else []
        if a == b:
            continue
        i = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        return Difference(w, i, a[i] if i < len(a) else None, b[i] if i < len(b) else None)
    return None


@torch.inference_mode()
def measure_gap(
    model: LoadedModel, reference: Any, run: ReferenceRun, difference: Difference, language: str
) -> Difference:
    """Both models' logit(our token) - logit(openai's token) at the first difference, from the same window
    mel, prompt and prefix (openai's: the window openai decoded). EOT stands for a run whose window ended."""
    if difference.window >= len(run.window_mels):
        return difference
    tokenizer = model.tokenizer
    ours = difference.ours if difference.ours is not None else tokenizer.eot
    theirs = difference.theirs if difference.theirs is not None else tokenizer.eot
    mel = run.window_mels[difference.window]
    prompt = run.window_prompts[difference.window][-(model.dims.n_text_ctx // 2 - 1) :]
    sot = list(tokenizer.sot_sequence(language, "transcribe"))
    prefix = ([tokenizer.sot_prev, *prompt] if prompt else []) + sot
    prefix += run.window_tokens[difference.window][: difference.position]
    tokens = torch.tensor([prefix])
    features = model.model.encoder(mel[None].to(model.dtype))
    cache = model.model.decoder.new_cache(features, 1)
    logits_ours = model.model.decoder(tokens, cache)[0, -1].float()
    logits_theirs = reference.logits(tokens, reference.encoder(mel[None]))[0, -1].float()
    difference.gap_ours = float(logits_ours[ours] - logits_ours[theirs])
    difference.gap_theirs = float(logits_theirs[ours] - logits_theirs[theirs])
    return difference
