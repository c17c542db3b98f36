"""Plain beam search (openai/whisper's semantics) with the KV cache following the beams by reorder."""

from __future__ import annotations

import pytest
import torch

from asr.beam_search import BeamCandidate, BeamSearch, rank
from asr.decoding import DecodingOptions, DecodingTask
from asr.errors import InvalidOptionError
from asr.logit_filters import LogitFilter, apply_filters
from asr.models import load_model
from asr.transcribe import transcribe
from tests.util import normalize, random_model


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
    assert result.stats["beam_size"] == 5 and result.stats["draft"] == "none"
