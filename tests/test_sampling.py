"""Speculative sampling keeps the target's distribution: the empirical distribution of the first three
sampled tokens, against the exact one computed from the target, through Whisper's real logit rules
(timestamps included) on a tiny random model with a small vocabulary; and the test fails on broken
verifiers (q read from unfiltered logits; every draft token accepted). Coupled sampling: a sampled
sequence is token-identical with and without the draft under one seed.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chi2

from asr.drafting import ModelDrafter, NoDraft, Proposal, Window
from asr.logit_filters import ApplyTimestampRules, SuppressAtBegin, SuppressTokens, apply_filters
from asr.loop import DraftLength, LoopResult, WindowInputs
from asr.model import ModelDims, Whisper
from asr.sampling import G_MAX, G_MIN, GumbelChoice, gumbel_noise, hash_key, row_generators
from asr.sequence_loop import sequence_loop
from asr.verify import EqualityVerifier, RejectionVerifier, Verdict

# A small vocabulary with Whisper's special tokens: text 0-39 (30-39 are "non-speech symbols", suppressed
# as a model config's list is), then EOT, <|notimestamps|>, SOT, a spare special, and 20 timestamps.
N_VOCAB, EOT, NO_TIMESTAMPS, SOT, SPECIAL, TIMESTAMP_BEGIN = 64, 40, 41, 42, 43, 44
NON_SPEECH = list(range(30, 40))
PROMPT = [SOT]
N_TOKENS = 3  # sampled tokens compared (of four: the draft proposes the second and third)
N_SAMPLES = 6_000
P_FLOOR = 1e-3  # a correct sampler passes the chi-square test at this level...
P_BROKEN = 1e-8  # ...a broken one is caught far below it


def _model(seed: int, scale: float, noise: float = 0.0) -> Whisper:
    dims = ModelDims(
        n_mels=80,
        n_audio_ctx=16,
        n_audio_state=32,
        n_audio_head=2,
        n_audio_layer=1,
        n_vocab=N_VOCAB,
        n_text_ctx=8,
        n_text_state=32,
        n_text_head=2,
        n_text_layer=2,
    )
    g = torch.Generator().manual_seed(seed)
    model = Whisper(dims)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name and name.endswith("weight"):
                p.fill_(1.0)
            elif p.ndim == 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
        model.decoder.token_embedding.weight.mul_(scale)
        perturb = torch.Generator().manual_seed(seed + 1000)
        for p in model.decoder.parameters():
            p.add_(torch.randn(p.shape, generator=perturb) * noise * p.std().nan_to_num())
    model.eval().requires_grad_(False)
    model.prepare_for_inference()
    return model


TARGET = _model(1, scale=2.5)
POOR_DRAFT = _model(2, scale=2.5)  # another random model: mostly wrong, so rejections and corrections
CLOSE_DRAFT = _model(1, scale=2.5, noise=0.15)  # the target, perturbed: accepted about half the time
FEATURES = torch.randn(1, 16, 32, generator=torch.Generator().manual_seed(3))
FILTERS = [
    SuppressAtBegin([EOT], sample_begin=len(PROMPT)),
    SuppressTokens([*NON_SPEECH, NO_TIMESTAMPS, SOT, SPECIAL], N_VOCAB),
    ApplyTimestampRules(
        eot=EOT,
        no_timestamps=NO_TIMESTAMPS,
        timestamp_begin=TIMESTAMP_BEGIN,
        sample_begin=len(PROMPT),
        max_initial_timestamp_index=3,
    ),
]


def _window() -> WindowInputs:
    return WindowInputs(
        decoder=TARGET.decoder,
        audio_features=FEATURES,
        mel=torch.empty(0),
        filters=FILTERS,
        initial_tokens=PROMPT,
        eot=EOT,
        sample_len=N_TOKENS + 1,
    )


@torch.inference_mode()
def exact_distribution(temperature: float) -> dict[tuple[int, ...], float]:
    """P(first three tokens) under the target with Whisper's rules, computed exactly: an outcome ending
    in EOT before three tokens is a shorter tuple ending in EOT."""
    decoder = TARGET.decoder
    probs: dict[tuple[int, ...], float] = {}
    frontier: dict[tuple[int, ...], float] = {(): 1.0}
    for _ in range(N_TOKENS):
        prefixes = list(frontier)
        tokens = torch.tensor([PROMPT + list(p) for p in prefixes])
        cache = decoder.new_cache(FEATURES, n_batch=len(prefixes))
        logits = decoder(tokens, cache)[:, -1].clone()
        apply_filters(FILTERS, logits, [PROMPT + list(p) for p in prefixes])
        rows = torch.softmax(logits.double() / temperature, dim=-1)
        next_frontier: dict[tuple[int, ...], float] = {}
        for prefix, row in zip(prefixes, rows, strict=True):
            for token in row.nonzero()[:, 0].tolist():
                mass = frontier[prefix] * float(row[token])
                if token == EOT:
                    probs[(*prefix, EOT)] = mass
                else:
                    next_frontier[(*prefix, token)] = mass
        frontier = next_frontier
    probs.update(frontier)
    assert abs(sum(probs.values()) - 1) < 1e-9
    return probs


def sampled_outcomes(verifier, drafter, k: int | None = 3) -> tuple[Counter[tuple[int, ...]], LoopResult]:
    """The first three tokens of N_SAMPLES sampled sequences (rows of one batch), and the loop's result."""
    loop = sequence_loop(_window(), drafter, verifier, DraftLength(k), n_rows=N_SAMPLES)
    outcomes = Counter(
        tuple(s.tokens[:N_TOKENS]) + ((EOT,) if len(s.tokens) < N_TOKENS else ()) for s in loop.samples
    )
    return outcomes, loop


def chi_square_p(observed: Counter[tuple[int, ...]], exact: dict[tuple[int, ...], float]) -> float:
    """Pearson's test of the counts against the exact distribution, outcomes expected fewer than 5 times
    pooled into one cell (an outcome of probability 0 observed at all fails it outright)."""
    n = sum(observed.values())
    if any(exact.get(outcome, 0.0) == 0.0 for outcome in observed):
        return 0.0
    statistic, cells, pooled_expected, pooled_observed = 0.0, 0, 0.0, 0
    for outcome, p in exact.items():
        expected = n * p
        if expected < 5:
            pooled_expected += expected
            pooled_observed += observed.get(outcome, 0)
            continue
        statistic += (observed.get(outcome, 0) - expected) ** 2 / expected
        cells += 1
    if pooled_expected > 0:
        statistic += (pooled_observed - pooled_expected) ** 2 / pooled_expected
        cells += 1
    return float(chi2.sf(statistic, cells - 1))


def rejection_verifier(temperature: float, seed: int = 0) -> RejectionVerifier:
    key = hash_key(seed)
    return RejectionVerifier(
        FILTERS, temperature, row_generators(key, N_SAMPLES, 1), row_generators(key, N_SAMPLES, 2)
    )


def poor_draft() -> ModelDrafter:
    return ModelDrafter("poor", POOR_DRAFT.decoder, EOT)


def close_draft() -> ModelDrafter:
    return ModelDrafter("close", CLOSE_DRAFT.decoder, EOT)


class UnfilteredQ(ModelDrafter):
    """A draft that samples from its distribution after Whisper's rules but reports q from its logits
    before them (the bug transformers shipped: q not the distribution the token was drawn from)."""

    def _logits(self, pending: list[list[int]]) -> torch.Tensor:
        logits = super()._logits(pending)
        self.raw.append(logits.clone())  # before propose() applies the rules to it
        return logits

    def propose(self, sequences, until, choice, rows) -> list[Proposal]:
        self.raw: list[torch.Tensor] = []
        proposals = super().propose(sequences, until, choice, rows)
        start = min(len(s) for s in sequences)  # the first _logits call is for this position
        return [
            Proposal(p.tokens, [self.raw[len(s) + j - start][r] for j in range(len(p.tokens))])
            for r, (s, p) in enumerate(zip(sequences, proposals, strict=True))
        ]


class AcceptEverything(RejectionVerifier):
    def verify(self, logits, tokens, proposal, row=0) -> Verdict:
        if not proposal.tokens:
            return super().verify(logits, tokens, proposal, row)
        apply_filters(FILTERS, logits, [tokens + proposal.tokens[:i] for i in range(len(logits))])
        rows = torch.log_softmax(logits[: len(proposal.tokens)], dim=-1)
        logprobs = [float(rows[i, t]) for i, t in enumerate(proposal.tokens)]
        return Verdict(list(proposal.tokens), logprobs, len(proposal.tokens))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("temperature", "draft", "acceptance"),
    [(0.6, poor_draft, (0, 0.2)), (1.0, close_draft, (0.3, 0.95))],
)
def test_speculative_rejection_sampling_has_the_targets_distribution(temperature, draft, acceptance):
    exact = exact_distribution(temperature)
    observed, loop = sampled_outcomes(rejection_verifier(temperature), draft())
    assert loop.n_proposed > N_SAMPLES
    assert acceptance[0] <= loop.n_accepted / loop.n_proposed <= acceptance[1], "the draft meant was tested"
    p = chi_square_p(observed, exact)
    assert p > P_FLOOR, f"p = {p:.2g}"


@pytest.mark.slow
@pytest.mark.parametrize("temperature", [1.0])
def test_plain_sampling_has_the_targets_distribution_both_ways(temperature):
    exact = exact_distribution(temperature)
    coupled = EqualityVerifier(FILTERS, GumbelChoice(hash_key(0), temperature))
    for verifier in (coupled, rejection_verifier(temperature)):
        observed, _ = sampled_outcomes(verifier, NoDraft())
        p = chi_square_p(observed, exact)
        assert p > P_FLOOR, f"{type(verifier).__name__}: p = {p:.2g}"


def test_coupled_speculative_sampling_is_plain_sampling_token_for_token():
    temperature = 1.0
    plain = sequence_loop(
        _window(), NoDraft(), EqualityVerifier(FILTERS, GumbelChoice(7, temperature)), DraftLength(), 2000
    )
    spec = sequence_loop(
        _window(), poor_draft(), EqualityVerifier(FILTERS, GumbelChoice(7, temperature)), DraftLength(3), 2000
    )
    assert spec.n_proposed > 0 and spec.n_accepted < spec.n_proposed
    assert [s.tokens for s in spec.samples] == [s.tokens for s in plain.samples]


@pytest.mark.slow
def test_the_distribution_test_catches_q_from_unfiltered_logits():
    temperature = 1.0
    observed, loop = sampled_outcomes(
        rejection_verifier(temperature), UnfilteredQ("broken", CLOSE_DRAFT.decoder, EOT)
    )
    assert loop.n_proposed > 0
    assert chi_square_p(observed, exact_distribution(temperature)) < P_BROKEN


@pytest.mark.slow
def test_the_distribution_test_catches_a_verifier_that_accepts_everything():
    temperature = 1.0
    key = hash_key(0)
    verifier = AcceptEverything(
        FILTERS, temperature, row_generators(key, N_SAMPLES, 1), row_generators(key, N_SAMPLES, 2)
    )
    observed, _ = sampled_outcomes(verifier, poor_draft())
    assert chi_square_p(observed, exact_distribution(temperature)) < P_BROKEN


def test_gumbel_noise_is_a_pure_function_within_its_bounds():
    tokens = torch.arange(N_VOCAB * 1000).numpy()
    a, b = gumbel_noise(hash_key(1, 2, 3), tokens), gumbel_noise(hash_key(1, 2, 3), tokens[::-1].copy())
    assert (a == b[::-1]).all(), "a token's noise does not depend on which others are scored"
    assert a.min() >= G_MIN and a.max() <= G_MAX
    assert abs(a.mean() - 0.5772) < 0.02 and abs(a.var() - math.pi**2 / 6) < 0.05  # Gumbel(0, 1)
    assert not (a == gumbel_noise(hash_key(1, 2, 4), tokens)).all()


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    temperature=st.sampled_from([0.2, 0.5, 1.0, 2.0]),
    scale=st.sampled_from([0.5, 2.0, 8.0]),
)
def test_gumbel_choice_is_the_argmax_over_the_whole_vocabulary(seed, temperature, scale):
    """Scoring only the tokens that can win gives the full argmax of logits / T + noise."""
    logits = torch.randn(3, 51866, generator=torch.Generator().manual_seed(seed % 1000)) * scale
    logits[:, ::7] = float("-inf")
    keys = [(r, seed) for r in range(3)]
    chosen = GumbelChoice(seed, temperature).choose(logits, keys)
    everything = torch.arange(logits.shape[1]).numpy()
    for row, (key, token) in enumerate(zip(keys, chosen, strict=True)):
        scores = logits[row].double().numpy() / temperature + gumbel_noise(hash_key(seed, *key), everything)
        assert token == int(scores.argmax())


@settings(max_examples=10, deadline=None)
@given(
    seed=st.integers(0, 10_000), temperature=st.sampled_from([0.3, 1.0, 1.5]), k=st.sampled_from([None, 2])
)
def test_coupled_sampling_identity_under_any_seed(seed, temperature, k):
    """Property: under one seed, best-of rows of speculative coupled sampling equal plain sampling's."""

    def run(drafter):
        verifier = EqualityVerifier(FILTERS, GumbelChoice(seed, temperature))
        window = WindowInputs(TARGET.decoder, FEATURES, torch.empty(0), FILTERS, PROMPT, EOT, sample_len=6)
        return [s.tokens for s in sequence_loop(window, drafter, verifier, DraftLength(k), 5).samples]

    assert run(poor_draft()) == run(NoDraft())


def test_rows_advance_together_in_the_draft():
    """Rows of unequal length each get proposals up to the same length (fewer only at EOT); a row already
    that long gets none."""
    drafter = poor_draft()
    cache = TARGET.decoder.new_cache(FEATURES, n_batch=4)
    drafter.start(Window(FEATURES, torch.empty(0), FILTERS, cache, PROMPT, n_rows=4))
    sequences = [[SOT, 54], [SOT, 54, 7, 9], [SOT, 55, 3], [SOT, 55, 3, 4, 8]]
    proposals = drafter.propose(sequences, 5, GumbelChoice(1, 1.0), [0, 1, 2, 3])
    for sequence, proposal in zip(sequences, proposals, strict=True):
        if EOT in proposal.tokens:
            assert proposal.tokens.index(EOT) == len(proposal.tokens) - 1
        else:
            assert len(sequence) + len(proposal.tokens) == 5
        assert proposal.logits is None or proposal.logits.shape == (len(proposal.tokens), N_VOCAB)
    assert proposals[3].tokens == []
