"""Whisper's temperature fallback (openai/whisper's transcribe() semantics) on tiny random models: when a
window is decoded again, what is kept, the prompt's rules, seeds, and that speculative sampling stays
token-identical to plain sampling through the whole long-form loop (coupled sampling)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from asr import transcribe as transcribe_module
from asr.decoding import DecodingOptions, DecodingResult, compression_ratio
from asr.errors import InvalidOptionError
from asr.loop import LoopResult
from asr.transcribe import DEFAULT_TEMPERATURES, TranscribeOptions, Transcriber, _needs_fallback, transcribe
from tests.util import random_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def target():
    # a flat random model: its text is unlikely (avg log-probability < -1), so windows fall back
    return random_model(seed=41, scale=1.0)


def _noise(seconds: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(int(16000 * seconds)).astype(np.float32) * 0.1


def _result(avg_logprob: float, ratio: float, no_speech: float, n_tokens: int = 9) -> DecodingResult:
    loop = LoopResult(
        tokens=[1] * n_tokens, sum_logprob=avg_logprob * (n_tokens + 1), prompt_hidden=torch.empty(0)
    )
    return DecodingResult(
        [1] * n_tokens, loop.sum_logprob, no_speech, 0.0, loop, temperature=0.0, compression_ratio=ratio
    )


@pytest.mark.parametrize(
    ("avg_logprob", "ratio", "no_speech", "falls_back"),
    [
        (-0.5, 1.5, 0.1, False),  # fine
        (-0.5, 2.5, 0.1, True),  # a repetition loop
        (-1.5, 1.5, 0.1, True),  # unlikely text
        (-1.5, 1.5, 0.9, False),  # silence: no speech, and unlikely text: not decoded again (skipped later)
        (-0.5, 2.5, 0.9, True),  # a loop over "silence" the model is confident about: decoded again
    ],
)
def test_fallback_rule_is_openais(avg_logprob, ratio, no_speech, falls_back):
    assert _needs_fallback(_result(avg_logprob, ratio, no_speech), TranscribeOptions()) is falls_back
    off = TranscribeOptions(compression_ratio_threshold=None, logprob_threshold=None)
    assert _needs_fallback(_result(avg_logprob, ratio, no_speech), off) is False


def test_compression_ratio_flags_repetition():
    assert compression_ratio("the cat sat on the mat " * 12) > 2.4
    assert compression_ratio("From fairest creatures we desire increase, that thereby beauty's rose") < 2.4
    assert compression_ratio("") == 0.0


def test_temperature_zero_is_exactly_the_decoding_without_fallback(target):
    samples = _noise(6, 1)
    options = DecodingOptions(sample_len=20)
    zero = Transcriber(target, options, TranscribeOptions(temperature=0.0)).transcribe(samples)
    assert all(s.temperature == 0.0 for s in zero.segments)
    assert zero.stats.temperature_retries == 0 and list(zero.stats.by_temperature) == ["0.0"]
    # the same windows, decoded by the sequence loop alone at T = 0
    with_fallback = Transcriber(target, options).transcribe(samples)
    assert with_fallback.stats.temperature_retries > 0, "the flat model's windows fall back"
    assert TranscribeOptions(temperature=0.0).temperature == (0.0,)
    assert TranscribeOptions().temperature == DEFAULT_TEMPERATURES


def test_fallback_marks_segments_and_stays_identical_with_the_draft(target):
    samples = _noise(35, 2)  # two windows
    options = DecodingOptions(sample_len=24, best_of=3)
    result = Transcriber(target, options, TranscribeOptions(compare=True)).transcribe(samples)
    stats = result.stats
    assert stats.windows_decoded_again >= 1 and stats.temperature_retries >= stats.windows_decoded_again
    assert any(s.temperature > 0 for s in result.segments)
    assert all(s.compression_ratio > 0 for s in result.segments)
    sampled = [t for t, f in stats.by_temperature.items() if float(t) > 0 and f.proposed]
    assert sampled, "the draft proposed in sampled windows"
    assert stats.identical_to_target is True, "coupled speculative sampling is plain sampling"
    as_json = stats.to_dict()
    assert as_json["by_temperature"]["0.2"]["decodes"] >= 1
    assert {"temperature", "compression_ratio"} <= set(result.to_dict()["segments"][0])


def test_a_seed_makes_a_sampled_run_reproducible(target):
    samples = _noise(6, 3)
    options = DecodingOptions(sample_len=16)
    only_sampling = TranscribeOptions(temperature=(0.6,), logprob_threshold=None)

    def text(seed: int) -> list[list[int]]:
        result = Transcriber(target, replace(options, seed=seed), only_sampling).transcribe(samples)
        return [s.tokens for s in result.segments]

    assert text(1) == text(1)
    assert text(1) != text(2)


def test_when_every_temperature_fails_the_best_under_the_ratio_threshold_is_kept(target, monkeypatch):
    made = iter(
        [
            _result(-3.0, 1.2, 0.1, 5),
            _result(-1.5, 3.0, 0.1, 6),
            _result(-2.0, 1.3, 0.1, 7),
            _result(-1.2, 2.9, 0.1, 8),
        ]
    )
    monkeypatch.setattr(transcribe_module.DecodingTask, "run", lambda self, *a, **k: next(made))
    stats_holder = Transcriber(
        target, DecodingOptions(sample_len=8), TranscribeOptions(temperature=(0, 0.2, 0.4, 0.6))
    )
    segments, info = stats_holder.stream(_noise(2, 4))
    list(segments)
    assert info.stats.windows_all_temperatures_failed == 1 and info.stats.temperature_retries == 3
    # kept: -2.0 (the best average log-probability of those under 2.4), not -1.2 (a loop) nor the last
    assert [len(t) for t in info.window_tokens] == [7]


def test_initial_prompt_and_prompt_reset_after_a_hot_window(target, monkeypatch):
    prompts: list[list[int] | None] = []
    original = transcribe_module.DecodingTask.__init__

    def recording(self, model, options, language, previous_tokens=None, seek=0):
        prompts.append((options.temperature, list(previous_tokens or [])))
        original(self, model, options, language, previous_tokens, seek)

    monkeypatch.setattr(transcribe_module.DecodingTask, "__init__", recording)
    samples = _noise(65, 5)  # three windows
    options = DecodingOptions(sample_len=12, timestamps=False)
    prompt = "Names: Ada Lovelace."
    Transcriber(target, options, TranscribeOptions(temperature=(1.0,), initial_prompt=prompt)).transcribe(
        samples
    )
    encoded = target.tokenizer.encode(" " + prompt)
    assert prompts[0] == (1.0, encoded), "the first window is prompted with the initial prompt"
    assert all(p == [] for _, p in prompts[1:]), "after a window above T = 0.5 the prompt is dropped"
    prompts.clear()
    Transcriber(target, options, TranscribeOptions(temperature=(0.4,), initial_prompt=prompt)).transcribe(
        samples
    )
    assert prompts[0][1] == encoded and len(prompts[1][1]) > len(encoded), "below 0.5 the text conditions"


def test_options_are_refused_in_one_line(target):
    for bad in ({"temperature": ()}, {"temperature": (0.0, -1.0)}, {"compression_ratio_threshold": 0}):
        with pytest.raises(InvalidOptionError):
            TranscribeOptions(**bad)
    for bad in ({"best_of": 0}, {"temperature": float("nan")}, {"sampling": "nucleus"}):
        with pytest.raises(InvalidOptionError):
            DecodingOptions(**bad)
    with pytest.raises(InvalidOptionError, match=r"TranscribeOptions\.temperature"):
        Transcriber(target, DecodingOptions(temperature=0.5))


def test_keyword_overrides_reach_both_option_sets(target):
    result = transcribe(target, _noise(3, 6), sample_len=8, temperature=0.0, seed=3)
    assert result.stats.temperature_retries == 0 and list(result.stats.by_temperature) == ["0.0"]
