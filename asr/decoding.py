"""Decoding one 30-s window: options validated once, Whisper's prompt and rules, then a loop.

Greedy decoding runs asr/sequence_loop.py with the verifier registered for it (VERIFIERS); beam search runs
asr/beam_search.py. Each is the same loop for plain and speculative decoding: plain is the case where the
drafter proposes nothing (drafting.NoDraft), one target pass per token (step).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .audio import TIME_PRECISION
from .beam_search import beam_search_loop
from .drafting import Drafter, NoDraft
from .errors import InvalidOptionError
from .logit_filters import ApplyTimestampRules, LogitFilter, SuppressAtBegin, SuppressTokens
from .loop import DraftLength, LoopResult, PassCosts, WindowInputs
from .model import CrossKV
from .models import LoadedModel
from .sampling import GumbelChoice, hash_key, row_generators
from .sequence_loop import sequence_loop
from .tokenizer import TASKS
from .verify import EqualityVerifier, GreedyVerifier, RejectionVerifier, Verifier

MAX_DRAFT_K = 16
MAX_BEAM_SIZE = 16
MAX_BEST_OF = 16
MAX_TEMPERATURE = 10.0
SAMPLING = ("coupled", "rejection")


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
    draft: str = "self"  # a registered draft ("self": a cheap copy of the target; "none": plain) or a model
    draft_k: int | None = None  # tokens proposed per target pass; None: adaptive
    beam_size: int | None = None  # None: greedy; else beam search with this many beams
    patience: float | None = None  # beam search: finished candidates to collect = round(beam_size * patience)
    length_penalty: float | None = None  # ranking (beams, samples): None divides by length, else NMT's
    temperature: float = 0.0  # 0: greedy, or beam search with beam_size; > 0: sampling
    best_of: int = 5  # samples per window at temperature > 0, the best ranked kept (beam_size is unused)
    seed: int = 0  # sampling's noise is a function of (seed, window, temperature, sample, position)
    sampling: str = "coupled"  # how speculative sampling verifies: "coupled" (seeded noise shared by draft
    # and target: token-identical to plain sampling) or "rejection" (Leviathan et al.: the same
    # distribution, not the same tokens; slower here at every temperature, benchmarks/sampling.py, so
    # the library's only)

    def __post_init__(self) -> None:
        if self.beam_size is not None and not 1 <= self.beam_size <= MAX_BEAM_SIZE:
            raise InvalidOptionError(
                f"beam_size (--beam-size) must be 1 to {MAX_BEAM_SIZE}, or unset (greedy)"
            )
        if self.patience is not None and (self.beam_size is None or self.patience <= 0):
            raise InvalidOptionError("patience (--patience) must be > 0 and needs a beam size")
        if self.length_penalty is not None and not 0 <= self.length_penalty <= 1:
            raise InvalidOptionError("length_penalty (--length-penalty) must be between 0 and 1")
        if self.draft_k is not None and not 1 <= self.draft_k <= MAX_DRAFT_K:
            raise InvalidOptionError(f"draft_k (--draft-k) must be 1 to {MAX_DRAFT_K}, or unset (adaptive)")
        if not 0 <= self.temperature <= MAX_TEMPERATURE or math.isnan(self.temperature):
            raise InvalidOptionError(
                f"temperature (--temperature) must be 0 to {MAX_TEMPERATURE:g}, got {self.temperature}"
            )
        if not 1 <= self.best_of <= MAX_BEST_OF:
            raise InvalidOptionError(f"best_of (--best-of) must be 1 to {MAX_BEST_OF}, got {self.best_of}")
        if self.sampling not in SAMPLING:
            raise InvalidOptionError(f"unknown sampling {self.sampling!r}; allowed: {', '.join(SAMPLING)}")
        if self.task not in TASKS:
            raise InvalidOptionError(f"unknown task {self.task!r}; allowed: {', '.join(TASKS)}")
        if self.sample_len is not None and self.sample_len < 1:
            raise InvalidOptionError(f"sample_len must be >= 1, got {self.sample_len}")
        if self.max_initial_timestamp is not None and self.max_initial_timestamp < 0:
            raise InvalidOptionError(f"max_initial_timestamp must be >= 0, got {self.max_initial_timestamp}")

    @property
    def strategy(self) -> str:
        """How each step's token is chosen: "sample" (temperature > 0), "beam" (beam search) or "greedy"."""
        if self.temperature > 0:
            return "sample"
        return "beam" if self.beam_size is not None else "greedy"

    @property
    def n_rows(self) -> int:
        """The rows a window decodes at once: best_of samples, beam_size beams, or one."""
        if self.strategy == "sample":
            return self.best_of
        return self.beam_size or 1


def _sampling_verifier(options: DecodingOptions, filters: Sequence[LogitFilter], key: int) -> Verifier:
    if options.sampling == "rejection":
        n = options.best_of
        return RejectionVerifier(
            filters, options.temperature, row_generators(key, n, 1), row_generators(key, n, 2)
        )
    return EqualityVerifier(filters, GumbelChoice(key, options.temperature))


# The verifier of each strategy the sequence loop runs, built from the window's filters and its sampling key:
# a new strategy is one Verifier class plus one entry here.
VERIFIERS: dict[str, Callable[[DecodingOptions, Sequence[LogitFilter], int], Verifier]] = {
    "greedy": lambda options, filters, key: GreedyVerifier(filters),
    "sample": _sampling_verifier,
}


def check_options(model: LoadedModel, options: DecodingOptions) -> None:
    """What the options ask of this model: a language it knows, translation from a multilingual model.
    (DecodingOptions checks the rest when it is made.) One place, once per run."""
    tokenizer = model.tokenizer
    if options.language is not None and options.language not in tokenizer.languages:
        english_only = "" if tokenizer.multilingual else " (English-only)"
        raise InvalidOptionError(
            f"language {options.language!r} is not supported by {model.name!r}{english_only}; "
            f"allowed: {', '.join(tokenizer.languages)}, auto"
        )
    if not tokenizer.multilingual and options.task == "translate":
        raise InvalidOptionError(f"model {model.name!r} is English-only: it cannot translate")


@dataclass
class DecodingResult:
    """One window's output. `tokens` are the sampled tokens (text and timestamps), without EOT."""

    tokens: list[int]
    sum_logprob: float
    no_speech_prob: float
    decode_time_s: float
    loop: LoopResult  # passes, proposals, acceptance, stage times
    temperature: float = 0.0
    compression_ratio: float = 0.0  # of the text: gzip's (zlib's) ratio; high for repetitive text

    @property
    def avg_logprob(self) -> float:
        return self.sum_logprob / (len(self.tokens) + 1)

    @property
    def n_target_passes(self) -> int:
        return self.loop.n_target_passes


class DecodingTask:
    """Everything fixed for one window's decoding: the prompt, the filters and the token limits."""

    def __init__(
        self,
        model: LoadedModel,
        options: DecodingOptions,
        language: str | None,
        previous_tokens: list[int] | None = None,
        seek: int = 0,
    ) -> None:
        """previous_tokens: text tokens to condition on (the last half-context of them is the prompt);
        seek: the window's first mel frame (with the seed and temperature, the key of its sampling noise)."""
        tokenizer = model.tokenizer
        dims = model.dims
        if model.tokenizer.multilingual and language is None:
            raise InvalidOptionError("a multilingual model needs a language (or detect one first)")
        self.model = model
        self.options = options
        self.sampling_key = hash_key(options.seed, seek, round(options.temperature * 1000))
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
        specials = (
            tokenizer.transcribe,
            tokenizer.translate,
            tokenizer.sot,
            tokenizer.sot_prev,
            tokenizer.sot_lm,
            tokenizer.no_speech,
        )
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

    def no_speech_prob(self, prompt_hidden: Tensor) -> float:
        """P(<|nospeech|>) at the SOT position. prompt_hidden: shape = (n_prompt, d), the target's."""
        logits = self.model.model.decoder.project(prompt_hidden[self.sot_index])
        probs = torch.softmax(logits.float(), dim=-1)
        return float(probs[self.model.tokenizer.no_speech])

    def run(
        self,
        audio_features: Tensor,
        mel: Tensor | None = None,
        drafter: Drafter | None = None,
        cross: CrossKV | None = None,
        costs: PassCosts | None = None,
    ) -> DecodingResult:
        """Decode one window: greedy, or beam search with options.beam_size; speculative either way when a
        drafter is given (the output is the same), proposing options.draft_k tokens (None: adaptive).

        audio_features: shape = (1, n_audio_ctx, n_audio_state), the target's encoder output;
        mel: shape = (n_mels, N_FRAMES), the window's input (a draft with its own encoder reads it);
        cross: the features' cross-attention projection, when already made (language detection makes it);
        costs: beam search's and best-of sampling's record of whether speculation pays, shared across
        windows (figures.pass_costs); greedy decoding needs none (one row's draft step is cheap).
        """
        options = self.options
        window = WindowInputs(
            decoder=self.model.model.decoder,
            audio_features=audio_features,
            mel=mel if mel is not None else torch.empty(0),
            filters=self.filters,
            initial_tokens=self.initial_tokens,
            eot=self.eot,
            sample_len=self.sample_len,
            cross=cross,
        )
        drafter = drafter or NoDraft()
        if options.strategy == "beam":
            assert options.beam_size is not None
            draft_length = DraftLength(options.draft_k, costs or PassCosts())
            loop = beam_search_loop(
                window,
                drafter,
                draft_length,
                options.beam_size,
                options.patience or 1.0,
                options.length_penalty,
            )
        else:
            verifier = VERIFIERS[options.strategy](options, self.filters, self.sampling_key)
            loop = sequence_loop(
                window,
                drafter,
                verifier,
                DraftLength(options.draft_k),
                options.n_rows,
                options.length_penalty,
            )
        return self._result(loop)

    def _result(self, loop: LoopResult) -> DecodingResult:
        text = self.model.tokenizer.decode(loop.tokens).strip()
        return DecodingResult(
            tokens=loop.tokens,
            sum_logprob=loop.sum_logprob,
            no_speech_prob=self.no_speech_prob(loop.prompt_hidden),
            decode_time_s=loop.decode_time_s,
            loop=loop,
            temperature=self.options.temperature,
            compression_ratio=compression_ratio(text),
        )


def compression_ratio(text: str) -> float:
    """How much zlib compresses the text: Whisper's sign of a repetition loop (> 2.4 by default)."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


@torch.inference_mode()
def detect_language(
    model: LoadedModel, audio_features: Tensor, cross: CrossKV | None = None
) -> tuple[str, dict[str, float]]:
    """The most probable language of a window and every language's probability (multilingual models).
    cross: the features' cross-attention projection, when already made."""
    tokenizer = model.tokenizer
    if not tokenizer.multilingual:
        return "en", {"en": 1.0}
    decoder = model.model.decoder
    cache = decoder.new_cache(audio_features, n_batch=1, cross=cross)
    logits = decoder(torch.tensor([[tokenizer.sot]], device=audio_features.device), cache)[0, -1]
    codes = list(tokenizer.language_tokens)
    ids = torch.tensor([tokenizer.language_tokens[c] for c in codes], device=logits.device)
    probs = torch.softmax(logits[ids].float(), dim=-1).tolist()
    by_code = dict(zip(codes, probs, strict=True))
    return max(by_code, key=by_code.__getitem__), by_code
