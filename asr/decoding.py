"""Decoding one 30-s window: options validated once, Whisper's rules as filters, our own greedy loop.

The loop owns its KV cache (asr/kv_cache.py): one forward pass over the prompt, then one pass per token.
Speculative decoding (a draft proposing k tokens, the target verifying them in one pass) reuses exactly
these pieces: the same filters per position, the same cache, cropped on rejection.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .audio import TIME_PRECISION
from .errors import InvalidOptionError
from .logit_filters import ApplyTimestampRules, LogitFilter, SuppressAtBegin, SuppressTokens, apply_filters
from .models import LoadedModel
from .tokenizer import TASKS


@dataclass(frozen=True)
class DecodingOptions:
    """How to decode. Frozen: derive variants with dataclasses.replace."""

    task: str = "transcribe"  # "transcribe" or "translate" (to English)
    language: str | None = None  # None: detect from the first 30 s (multilingual models)
    timestamps: bool = True  # segment-level timestamp tokens (needed to seek by them in long audio)
    sample_len: int | None = None  # max sampled tokens per window; None: half the text context (224)
    suppress_blank: bool = True  # no blank or EOT as the first token
    suppress_tokens: tuple[int, ...] | None = None  # None: the model config's list
    max_initial_timestamp: float | None = 1.0  # seconds; the first timestamp may not be later

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise InvalidOptionError(f"unknown task {self.task!r}; allowed: {', '.join(TASKS)}")
        if self.sample_len is not None and self.sample_len < 1:
            raise InvalidOptionError(f"sample_len must be >= 1, got {self.sample_len}")
        if self.max_initial_timestamp is not None and self.max_initial_timestamp < 0:
            raise InvalidOptionError(f"max_initial_timestamp must be >= 0, got {self.max_initial_timestamp}")


@dataclass
class DecodingResult:
    """One window's output. `tokens` are the sampled tokens (text and timestamps), without EOT."""

    tokens: list[int]
    sum_logprob: float
    no_speech_prob: float
    n_target_passes: int
    decode_time_s: float
    stats: dict = field(default_factory=dict)

    @property
    def avg_logprob(self) -> float:
        return self.sum_logprob / (len(self.tokens) + 1)


class DecodingTask:
    """Everything fixed for one window's decoding: the prompt, the filters and the token limits."""

    def __init__(
        self,
        model: LoadedModel,
        options: DecodingOptions,
        language: str | None,
        previous_tokens: list[int] | None = None,
    ) -> None:
        tokenizer = model.tokenizer
        dims = model.dims
        if model.tokenizer.multilingual and language is None:
            raise InvalidOptionError("a multilingual model needs a language (or detect one first)")
        if not tokenizer.multilingual and options.task == "translate":
            raise InvalidOptionError(f"model {model.name!r} is English-only: it cannot translate")
        self.model = model
        self.options = options
        self.eot = tokenizer.eot
        self.sample_len = options.sample_len or dims.n_text_ctx // 2

        sot_sequence = tokenizer.sot_sequence(language, options.task)
        if not options.timestamps:
            sot_sequence = [*sot_sequence, tokenizer.no_timestamps]
        prompt: list[int] = []
        if previous_tokens:
            # The last half-context of earlier text conditions this window (openai/whisper's prompt).
            prompt = [tokenizer.sot_prev, *previous_tokens[-(dims.n_text_ctx // 2 - 1) :]]
        self.initial_tokens = prompt + sot_sequence
        self.sot_index = len(prompt)
        self.sample_begin = len(self.initial_tokens)
        self.sample_len = min(self.sample_len, dims.n_text_ctx - self.sample_begin)

        suppress = options.suppress_tokens if options.suppress_tokens is not None else model.suppress_tokens
        specials = (tokenizer.transcribe, tokenizer.translate, tokenizer.sot, tokenizer.sot_prev)
        specials += (tokenizer.sot_lm, tokenizer.no_speech)
        self.filters: list[LogitFilter] = []
        if options.suppress_blank:
            begin = model.suppress_tokens_begin or (*tokenizer.encode(" "), tokenizer.eot)
            self.filters.append(SuppressAtBegin(begin, self.sample_begin))
        self.filters.append(SuppressTokens((*suppress, *specials), dims.n_vocab))
        if options.timestamps:
            max_initial = None
            if options.max_initial_timestamp is not None:
                max_initial = round(options.max_initial_timestamp / TIME_PRECISION)
            self.filters.append(
                ApplyTimestampRules(
                    eot=tokenizer.eot,
                    no_timestamps=tokenizer.no_timestamps,
                    timestamp_begin=tokenizer.timestamp_begin,
                    sample_begin=self.sample_begin,
                    max_initial_timestamp_index=max_initial,
                )
            )

    def no_speech_prob(self, prompt_logits: Tensor) -> float:
        """P(<|nospeech|>) at the SOT position. prompt_logits: shape = (n_prompt, n_vocab)."""
        probs = torch.softmax(prompt_logits[self.sot_index].float(), dim=-1)
        return float(probs[self.model.tokenizer.no_speech])

    @torch.inference_mode()
    def run(self, audio_features: Tensor) -> DecodingResult:
        """Greedy decoding of one window. audio_features: shape = (1, n_audio_ctx, n_audio_state)."""
        decoder = self.model.model.decoder
        device = audio_features.device
        start = time.perf_counter()
        cache = decoder.new_cache(audio_features, n_batch=1)
        tokens = list(self.initial_tokens)
        logits = decoder(torch.tensor([tokens], device=device), cache)[0]
        no_speech_prob = self.no_speech_prob(logits)
        row = logits[-1:]
        n_passes, sum_logprob = 1, 0.0
        for _ in range(self.sample_len):
            apply_filters(self.filters, row, [tokens])
            logprobs = torch.log_softmax(row, dim=-1)
            next_token = int(row.argmax())
            sum_logprob += float(logprobs[0, next_token])
            if next_token == self.eot:
                break
            tokens.append(next_token)
            if len(tokens) - self.sample_begin >= self.sample_len:
                break
            row = decoder(torch.tensor([[next_token]], device=device), cache)[0]
            n_passes += 1
        return DecodingResult(
            tokens=tokens[self.sample_begin :],
            sum_logprob=sum_logprob,
            no_speech_prob=no_speech_prob,
            n_target_passes=n_passes,
            decode_time_s=time.perf_counter() - start,
        )


@torch.inference_mode()
def detect_language(model: LoadedModel, audio_features: Tensor) -> tuple[str, dict[str, float]]:
    """The most probable language of a window and every language's probability (multilingual models)."""
    tokenizer = model.tokenizer
    if not tokenizer.multilingual:
        return "en", {"en": 1.0}
    decoder = model.model.decoder
    cache = decoder.new_cache(audio_features, n_batch=1)
    logits = decoder(torch.tensor([[tokenizer.sot]], device=audio_features.device), cache)[0, -1]
    codes = list(tokenizer.language_tokens)
    ids = torch.tensor([tokenizer.language_tokens[c] for c in codes], device=logits.device)
    probs = torch.softmax(logits[ids].float(), dim=-1).tolist()
    by_code = dict(zip(codes, probs, strict=True))
    return max(by_code, key=by_code.__getitem__), by_code
