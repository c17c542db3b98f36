"""The decoding scaffold's seams: a drafter's proposal carries q, a loop takes any verifier, a new drafter or
verifier is one class plus one registration, every target pass is recorded, a run checks its options and
builds its drafter once, and a stream returns before any window is decoded."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from asr import decoding, draft_factory
from asr import transcribe as transcribe_module
from asr.decoding import DecodingOptions, DecodingTask
from asr.drafting import Proposal, SelfDrafter
from asr.errors import InvalidOptionError
from asr.figures import RunStats
from asr.logit_filters import argmax_rows
from asr.transcribe import TranscribeOptions, Transcriber, transcribe_stream
from asr.verify import GreedyVerifier, Verdict
from tests.util import perturbed_decoder, random_model

# What the JSON's stats held before RunStats (every key must stay: the schema only grows).
LEGACY_STATS_KEYS = {
    "target", "draft", "draft_step", "draft_k", "beam_size", "device", "dtype", "n_windows",
    "n_silent_windows", "n_tokens", "proposed", "accepted", "accepted_length_histogram", "target_passes",
    "beam_steps",
    "draft_passes", "fallback_windows", "time_s", "acceptance_rate", "tokens_per_target_pass", "tokens_per_s",
    "realtime_factor", "speedup", "speedup_kind", "speedup_basis", "identical_to_target",
    "beam_steps_per_target_pass", "speedup_end_to_end", "plain",
}  # fmt: skip
LEGACY_TIME_KEYS = {"load_audio", "mel", "encoder", "cross_kv", "draft", "target", "decode", "total"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def target():
    return random_model(seed=31, scale=4.0)


def _features(m, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, m.dims.n_audio_ctx, m.dims.n_audio_state, generator=g)


class RecordingVerifier(GreedyVerifier):
    """Greedy verification that keeps every proposal it was shown."""

    def __init__(self, filters) -> None:
        super().__init__(filters)
        self.proposals: list[Proposal] = []

    def verify(self, logits: torch.Tensor, tokens: list[int], proposal: Proposal, row: int = 0) -> Verdict:
        self.proposals.append(proposal)
        return super().verify(logits, tokens, proposal, row)


def test_a_registered_verifier_runs_and_sees_the_drafts_distribution(target, monkeypatch):
    made: list[RecordingVerifier] = []

    def make(options, filters, key):
        made.append(RecordingVerifier(filters))
        return made[-1]

    monkeypatch.setitem(decoding.VERIFIERS, "greedy", make)
    options = DecodingOptions(timestamps=True, sample_len=20, draft_k=4)
    drafter = SelfDrafter("noisy", perturbed_decoder(target, 0.05, 3), target.tokenizer.eot)
    result = DecodingTask(target, options, "en").run(_features(target, 3), None, drafter)
    (verifier,) = made
    proposed = [p for p in verifier.proposals if p.tokens]
    assert len(verifier.proposals) == result.loop.n_target_passes and proposed
    for proposal in proposed:
        q = proposal.logits
        assert q is not None and q.shape == (len(proposal.tokens), target.dims.n_vocab)
        # q after Whisper's rules: each token is its row's argmax, and rules left forbidden tokens at -inf
        assert argmax_rows(q.clone()) == proposal.tokens
        assert torch.isinf(q).any()
    assert Proposal([]).logits is None


def test_every_target_pass_is_recorded_greedy_and_beam(target):
    drafter = SelfDrafter("noisy", perturbed_decoder(target, 0.05, 4), target.tokenizer.eot)
    for options in (
        DecodingOptions(timestamps=False, sample_len=24, draft_k=3),
        DecodingOptions(timestamps=False, sample_len=12, draft_k=3, beam_size=3),
    ):
        loop = DecodingTask(target, options, "en").run(_features(target, 4), None, drafter).loop
        passes = loop.passes
        assert len(passes) == loop.n_target_passes >= 2
        assert passes[0].n_proposed == 0, "the prompt's pass comes before any draft"
        assert sum(p.n_proposed for p in passes) == loop.n_proposed > 0
        assert sum(p.n_accepted for p in passes) == loop.n_accepted
        assert all(0 <= p.n_accepted <= p.n_proposed for p in passes)
        if options.beam_size is None:
            assert sum(p.n_committed for p in passes) == len(loop.tokens)
            assert sum(p.n_accepted for p in passes) == sum(loop.drafted)
        else:
            assert sum(p.n_committed for p in passes) == loop.n_beam_steps


def test_a_new_drafter_is_one_class_and_one_registration(target, monkeypatch):
    class TargetCopy(SelfDrafter):
        """The target itself as its own draft: every proposal stands."""

    monkeypatch.setitem(
        draft_factory._FACTORIES,
        "target-copy",
        lambda m, beam: TargetCopy("copy", m.model.decoder, m.tokenizer.eot),
    )
    assert "target-copy" in draft_factory.draft_names()
    samples = np.random.default_rng(5).standard_normal(16000 * 4).astype(np.float32) * 0.1
    options = DecodingOptions(draft="target-copy", sample_len=20)
    result = Transcriber(target, options, TranscribeOptions(compare=True)).transcribe(samples)
    stats = result.stats
    assert stats.draft == "copy" and stats.draft_step == "pytorch"
    assert stats.accepted == stats.proposed > 0 and stats.identical_to_target is True


def test_a_transcriber_builds_its_drafter_once_for_every_input(target, monkeypatch):
    calls = []
    make = transcribe_module.make_drafter
    monkeypatch.setattr(transcribe_module, "make_drafter", lambda *a, **k: calls.append(a) or make(*a, **k))
    transcriber = Transcriber(target, DecodingOptions(sample_len=8))
    samples = np.random.default_rng(6).standard_normal(16000 * 2).astype(np.float32) * 0.1
    first, second = transcriber.transcribe(samples), transcriber.transcribe(samples)
    assert len(calls) == 1
    assert [s.tokens for s in first.segments] == [s.tokens for s in second.segments]


def test_options_are_checked_against_the_model_when_the_run_is_made(target):
    with pytest.raises(InvalidOptionError, match="English-only"):
        Transcriber(target, DecodingOptions(task="translate"))
    with pytest.raises(InvalidOptionError, match="English-only"):
        Transcriber(target, DecodingOptions(language="de"))
    with pytest.raises(InvalidOptionError, match="max-duration"):
        TranscribeOptions(max_duration_s=0)


def test_a_stream_returns_before_decoding_and_completes_its_figures_at_the_end(target):
    samples = np.random.default_rng(7).standard_normal(16000 * 40).astype(np.float32) * 0.1
    segments, info = transcribe_stream(
        target, samples, None, TranscribeOptions(condition_on_previous_text=False), sample_len=8
    )
    stats = info.stats
    assert isinstance(stats, RunStats)
    assert stats.n_windows == 0 and stats.speedup_kind is None, "nothing decoded before iterating"
    assert info.language == "en" and info.duration_s == pytest.approx(40.0)
    collected = list(segments)
    assert stats.n_windows >= 2 and stats.speedup_kind == "estimated"
    assert sum(len(s.tokens) for s in collected) <= stats.n_tokens


def test_json_stats_only_grow(target):
    samples = np.random.default_rng(8).standard_normal(16000 * 2).astype(np.float32) * 0.1
    for options in (DecodingOptions(sample_len=8), replace(DecodingOptions(sample_len=8), beam_size=2)):
        for compare in (False, True):
            stats = Transcriber(target, options, TranscribeOptions(compare=compare)).transcribe(samples).stats
            data = stats.to_dict()
            assert data.keys() >= LEGACY_STATS_KEYS
            assert data["time_s"].keys() >= LEGACY_TIME_KEYS
            assert (data["plain"] is not None) == compare
            assert len(data["passes"]) == data["target_passes"]
