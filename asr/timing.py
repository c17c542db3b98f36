"""Word-level timestamps from the target's own cross-attention (openai-whisper's method, timing.py).

For a window's final text tokens, one teacher-forced decoder pass (`<|sot|>... <|notimestamps|>` + the text
+ EOT, no prompt) gives the cross-attention of the alignment heads: the heads whose attention follows the
speech. Their weights over the window's audio frames (only those with content) are softmaxed, normalised
per head over the tokens, median-filtered along time (width 7), averaged over the heads; dynamic time
warping through that matrix puts each token at the audio frames it attends to (20 ms each, the encoder's
stride), and words take the times of their first and last token. Punctuation is merged into the words
beside it as openai does, and each word carries the mean probability of its tokens.

Alignment heads: openai's published masks for the bundled models; a Hugging Face checkpoint's
`alignment_heads` (generation_config.json); otherwise the last half of the decoder layers, every head.
"""

from __future__ import annotations

import itertools
import string
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
import torch.nn.functional as F

from .audio import TIME_PRECISION
from .model import CrossKV, DecoderBlock
from .results import Word

if TYPE_CHECKING:
    from .models import LoadedModel
    from .results import Segment

MEDIAN_FILTER_WIDTH = 7
# openai-whisper's published alignment heads (layer, head) of the models bundled here
ALIGNMENT_HEADS: dict[str, tuple[tuple[int, int], ...]] = {
    "tiny.en": ((1, 0), (2, 0), (2, 5), (3, 0), (3, 1), (3, 2), (3, 3), (3, 4)),
    "base": ((3, 1), (4, 2), (4, 3), (4, 7), (5, 1), (5, 2), (5, 4), (5, 6)),
}
PREPEND_PUNCTUATION = "\"'“¿([{-"
APPEND_PUNCTUATION = "\"'.。,，!！?？:：”)]}、"
SENTENCE_ENDS = ".。!！?？"
# Written without spaces between words: split into words by characters (openai's rule)
UNSPACED_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "my", "yue"})


@dataclass
class TimedWord:
    """A word as the alignment finds it: times in seconds from the window's start, and its tokens."""

    word: str
    start: float
    end: float
    probability: float
    tokens: list[int]


def alignment_heads(model: LoadedModel) -> tuple[tuple[int, int], ...]:
    """The (layer, head) pairs whose cross-attention is used for timing."""
    if model.alignment_heads:
        return model.alignment_heads
    if model.name in ALIGNMENT_HEADS:
        return ALIGNMENT_HEADS[model.name]
    dims = model.dims
    return tuple(
        (layer, head)
        for layer in range(dims.n_text_layer // 2, dims.n_text_layer)
        for head in range(dims.n_text_head)
    )


# A sorting network for 7 values (16 compare-exchanges; tests/test_timing.py checks that it sorts)
SORT7 = (
    ((0, 6), (2, 3), (4, 5)),
    ((0, 2), (1, 4), (3, 6)),
    ((0, 1), (2, 5), (3, 4)),
    ((1, 2), (4, 6)),
    ((2, 3), (4, 5)),
    ((1, 2), (3, 4), (5, 6)),
)


def median_filter(x: torch.Tensor, width: int) -> torch.Tensor:
    """Median over a sliding window of `width` along the last axis, reflect-padded (openai's filter). For
    width 7, the middle of a sorting network run on the 7 shifted views (the same values as sorting each
    window, at a fraction of the cost)."""
    pad = width // 2
    if x.shape[-1] <= pad:
        return x
    padded = F.pad(x.reshape(1, -1, x.shape[-1]), (pad, pad), mode="reflect").reshape(*x.shape[:-1], -1)
    n = x.shape[-1]
    if width != 7:
        return padded.unfold(-1, width, 1).sort()[0][..., pad]
    v = [padded[..., i : i + n] for i in range(7)]
    for layer in SORT7:
        for a, b in layer:
            v[a], v[b] = torch.minimum(v[a], v[b]), torch.maximum(v[a], v[b])
    return v[3]


def dtw(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The cheapest monotone path through `cost` (tokens x frames) from (0, 0) to the far corner, with
    openai's step order and ties: diagonal if strictly cheapest, else down if strictly cheapest, else
    right. Returns the path's token and frame indices. The cells are filled one anti-diagonal at a time
    (each depends only on the two before it), so numpy does the inner loop."""
    n, m = cost.shape
    acc = np.full((n + 1, m + 1), np.inf)
    acc[0, 0] = 0.0
    step = np.zeros((n + 1, m + 1), dtype=np.int8)
    for d in range(2, n + m + 1):  # cells (i, j), 1-based, with i + j = d
        i = np.arange(max(1, d - m), min(n, d - 1) + 1)
        j = d - i
        diagonal, down, right = acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1]
        best = np.where(
            (diagonal < down) & (diagonal < right), 0, np.where((down < diagonal) & (down < right), 1, 2)
        )
        acc[i, j] = cost[i - 1, j - 1] + np.choose(best, (diagonal, down, right))
        step[i, j] = best
    step[0, :], step[:, 0] = 2, 1
    i, j = n, m
    path = []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        move = step[i, j]
        if move == 0:
            i, j = i - 1, j - 1
        elif move == 1:
            i -= 1
        else:
            j -= 1
    rows, cols = np.array(path[::-1]).T
    return rows, cols


def split_words(tokenizer, tokens: list[int], language: str | None) -> tuple[list[str], list[list[int]]]:
    """Text tokens (then EOT) -> words and their tokens, by openai's rules: by characters where a language
    has no spaces, else a word starts at a space, at punctuation or at a special token."""
    pieces, piece_tokens = _split_on_characters(tokenizer, tokens)
    if language in UNSPACED_LANGUAGES:
        return pieces, piece_tokens
    words: list[str] = []
    word_tokens: list[list[int]] = []
    for piece, ids in zip(pieces, piece_tokens, strict=True):
        special = ids[0] >= tokenizer.eot
        if special or piece.startswith(" ") or piece.strip() in string.punctuation or not words:
            words.append(piece)
            word_tokens.append(list(ids))
        else:
            words[-1] += piece
            word_tokens[-1].extend(ids)
    return words, word_tokens


def _split_on_characters(tokenizer, tokens: list[int]) -> tuple[list[str], list[list[int]]]:
    """Tokens grouped so that each group decodes to whole characters (a character's UTF-8 bytes may be
    split over tokens); a replacement character the text itself has counts as whole."""
    full = tokenizer.decode(tokens)
    pieces: list[str] = []
    groups: list[list[int]] = []
    current: list[int] = []
    offset = 0
    for token in tokens:
        current.append(token)
        if token >= tokenizer.eot:
            pieces.append("<|endoftext|>" if token == tokenizer.eot else "")
            groups.append(current)
            current = []
            continue
        text = tokenizer.decode(current)
        broken = text.find("\ufffd")
        if broken < 0 or full[offset + broken : offset + broken + 1] == "\ufffd":
            pieces.append(text)
            groups.append(current)
            current = []
            offset += len(text)
    return pieces, groups


def find_alignment(
    model: LoadedModel,
    features: torch.Tensor,
    text_tokens: list[int],
    n_frames: int,
    language: str | None,
    task: str = "transcribe",
    cross: CrossKV | None = None,
) -> list[TimedWord]:
    """Words of `text_tokens` with times in seconds from the window's start. features: the window's encoder
    output, shape = (1, n_audio_ctx, d); n_frames: the window's mel frames with content (<= 3000); cross:
    its cross-attention projection, when the decoding made it already."""
    if not text_tokens:
        return []
    tokenizer = model.tokenizer
    decoder = model.model.decoder
    sot_sequence = tokenizer.sot_sequence(language, task)
    tokens = [*sot_sequence, tokenizer.no_timestamps, *text_tokens, tokenizer.eot]
    heads = alignment_heads(model)
    layers = sorted({layer for layer, _ in heads})
    queries: dict[int, torch.Tensor] = {}
    caller = threading.get_ident()

    def keep(layer: int, output: torch.Tensor) -> None:
        # The model is shared (the app decodes for several users at once): only this thread's pass counts.
        if threading.get_ident() == caller:
            queries[layer] = output

    hooks = [
        cast(DecoderBlock, decoder.blocks[layer]).cross_attn.q.register_forward_hook(
            lambda _module, _inputs, output, layer=layer: keep(layer, output)
        )
        for layer in layers
    ]
    try:
        with torch.inference_mode():
            cache = decoder.new_cache(features, 1, cross)
            logits = decoder(torch.tensor([tokens], device=features.device), cache)[0]
            n_head = model.dims.n_text_head
            weights = []
            for layer, head in heads:
                q = queries[layer][0].float()  # (n_tokens, d)
                d_head = q.shape[-1] // n_head
                k = cache.cross_k[layer][0, head].float()  # (n_audio_ctx, d_head)
                qk = (q[:, head * d_head : (head + 1) * d_head] @ k.T) * d_head**-0.5
                weights.append(qk[:, : n_frames // 2])
            stacked = torch.stack(weights).softmax(dim=-1)
            std, mean = torch.std_mean(stacked, dim=-2, keepdim=True, unbiased=False)
            stacked = median_filter((stacked - mean) / std, MEDIAN_FILTER_WIDTH)
            # rows from <|notimestamps|> (which predicts the first text token) to the last text token
            matrix = stacked.mean(dim=0)[len(sot_sequence) : -1]
            start = len(sot_sequence) + 1
            probs = logits[start - 1 : start - 1 + len(text_tokens), : tokenizer.eot].float().softmax(dim=-1)
            token_probs = probs[torch.arange(len(text_tokens)), torch.tensor(text_tokens)].tolist()
    finally:
        for hook in hooks:
            hook.remove()
    text_index, time_index = dtw(-matrix.double().cpu().numpy())
    words, word_tokens = split_words(tokenizer, [*text_tokens, tokenizer.eot], language)
    if len(word_tokens) <= 1:
        return []
    boundaries = np.pad(np.cumsum([len(t) for t in word_tokens[:-1]]), (1, 0))
    jumps = np.pad(np.diff(text_index), (1, 0), constant_values=1).astype(bool)
    jump_times = time_index[jumps] * TIME_PRECISION
    starts, ends = jump_times[boundaries[:-1]], jump_times[boundaries[1:]]
    out = []
    for word, ids, begin, stop, first, last in zip(
        words[:-1], word_tokens[:-1], starts, ends, boundaries[:-1], boundaries[1:], strict=True
    ):
        out.append(
            TimedWord(word, float(begin), float(stop), float(np.mean(token_probs[first:last])), list(ids))
        )
    return out


def merge_punctuations(words: list[TimedWord]) -> list[TimedWord]:
    """Punctuation joined to its word (openai's rule): opening marks to the word after, closing marks and
    stops to the word before. Returns the words that remain (times of the word kept)."""
    words = [TimedWord(w.word, w.start, w.end, w.probability, list(w.tokens)) for w in words]
    i = len(words) - 2
    j = len(words) - 1
    while i >= 0:  # prepended punctuation: merged into the next word
        previous, following = words[i], words[j]
        if previous.word.startswith(" ") and previous.word.strip() in PREPEND_PUNCTUATION:
            following.word = previous.word + following.word
            following.tokens = previous.tokens + following.tokens
            previous.word, previous.tokens = "", []
        else:
            j = i
        i -= 1
    i, j = 0, 1
    while j < len(words):  # appended punctuation: merged into the word before
        previous, following = words[i], words[j]
        if not previous.word.endswith(" ") and following.word in APPEND_PUNCTUATION:
            previous.word = previous.word + following.word
            previous.tokens = previous.tokens + following.tokens
            following.word, following.tokens = "", []
        else:
            i = j
        j += 1
    return [w for w in words if w.word]


def add_word_timestamps(
    model: LoadedModel,
    features: torch.Tensor,
    segments: list[Segment],
    n_frames: int,
    time_offset: float,
    language: str | None,
    task: str = "transcribe",
    cross: CrossKV | None = None,
    last_speech: float = 0.0,
) -> float:
    """Set `words` on a window's segments (times on the audio's timeline: `time_offset` is the window's
    start), with openai's adjustments: a word is at most twice the median word duration (0.7 s at most)
    at a sentence end and as the first words after a pause (`last_speech`: where the speech before this
    window ended), and a segment's bounds move to its words unless a first or last word overruns the
    segment's own timestamp by over 0.5 s, which the word then gives up. Returns where this window's
    last word ends (`last_speech` for the next window)."""
    eot = model.tokenizer.eot
    per_segment = [[t for t in s.tokens if t < eot] for s in segments]
    text_tokens = [t for tokens in per_segment for t in tokens]
    alignment = find_alignment(model, features, text_tokens, n_frames, language, task, cross)
    durations = [w.end - w.start for w in alignment if w.end - w.start != 0]
    median = min(0.7, float(np.median(durations))) if durations else 0.0
    longest = 2 * median
    if durations:
        for previous, word in itertools.pairwise(alignment):
            if word.end - word.start > longest:
                if word.word in SENTENCE_ENDS:
                    word.end = word.start + longest
                elif previous.word in SENTENCE_ENDS:
                    word.start = word.end - longest
    timed = merge_punctuations(alignment)
    k = 0
    speech_end = last_speech
    for segment, tokens in zip(segments, per_segment, strict=True):
        words: list[dict[str, float | str]] = []
        n_tokens = 0
        while k < len(timed) and n_tokens < len(tokens):  # openai's rule: until the segment's tokens are had
            w = timed[k]
            words.append(
                {
                    "word": w.word,
                    "start": round(time_offset + w.start, 2),
                    "end": round(time_offset + w.end, 2),
                    "probability": w.probability,
                }
            )
            n_tokens += len(w.tokens)
            k += 1
        if words:
            _adjust_bounds(segment, words, last_speech, median, longest)
            last_speech, speech_end = segment.end, float(words[-1]["end"])
        segment.words = [
            Word(str(w["word"]), float(w["start"]), float(w["end"]), round(float(w["probability"]), 4))
            for w in words
        ]
    return speech_end


def _adjust_bounds(
    segment: Segment, words: list[dict[str, float | str]], last_speech: float, median: float, longest: float
) -> None:
    first, last = words[0], words[-1]

    def t(word: dict[str, float | str], key: str) -> float:
        return float(word[key])

    # the first (and second) word after a pause: no longer than twice the median
    second_long = len(words) > 1 and t(words[1], "end") - t(first, "start") > 2 * longest
    if t(first, "end") - last_speech > 4 * median and (
        t(first, "end") - t(first, "start") > longest or second_long
    ):
        if len(words) > 1 and t(words[1], "end") - t(words[1], "start") > longest:
            boundary = max(t(words[1], "end") / 2, t(words[1], "end") - longest)
            first["end"] = words[1]["start"] = boundary
        first["start"] = max(0.0, t(first, "end") - longest)
    # a first word starting over 0.5 s before the segment's own start: cut back to it
    if segment.start < t(first, "end") and segment.start - 0.5 > t(first, "start"):
        first["start"] = max(0.0, min(t(first, "end") - median, segment.start))
    else:
        segment.start = t(first, "start")
    # a last word ending over 0.5 s after the segment's own end: cut back to it
    if segment.end > t(last, "start") and segment.end + 0.5 < t(last, "end"):
        last["end"] = max(t(last, "start") + median, segment.end)
    else:
        segment.end = t(last, "end")
