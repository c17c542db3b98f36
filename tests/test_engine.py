"""The decoding engine on tiny random-weight models: cache, filters, options, loop, HF mapping."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from asr.decoding import DecodingOptions, DecodingTask, check_options
from asr.errors import InvalidOptionError
from asr.logit_filters import ApplyTimestampRules, SuppressAtBegin, SuppressTokens
from asr.model import Linear, cross_attend, linear_add, linear_gelu
from asr.quantised import CastLinear, Int8Linear, cheap_linear, self_draft_decoder
from asr.transcribe import _split_by_timestamps
from tests.util import random_dims, random_model

torch.manual_seed(0)


@pytest.fixture(scope="module")
def tiny():
    return random_model(seed=1)


def _features(m, seed=0, n_batch=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_batch, m.dims.n_audio_ctx, m.dims.n_audio_state, generator=g)


@torch.inference_mode()
def test_incremental_logits_equal_one_full_pass(tiny):
    decoder = tiny.model.decoder
    features = _features(tiny)
    tokens = torch.tensor([[50257, 400, 370, 452, 7177, 6280, 11, 1029, 406]])
    full = decoder(tokens, decoder.new_cache(features, 1))
    cache = decoder.new_cache(features, 1)
    steps = [decoder(tokens[:, :3], cache)] + [decoder(tokens[:, i : i + 1], cache) for i in range(3, 9)]
    incremental = torch.cat(steps, dim=1)
    assert cache.length == 9
    torch.testing.assert_close(incremental, full, atol=1e-4, rtol=1e-4)


needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="no oneDNN in this torch")


@needs_onednn
@torch.inference_mode()
def test_a_packed_linear_computes_the_same_product_and_stays_dense_in_its_state_dict():
    g = torch.Generator().manual_seed(3)
    linear = Linear(64, 96)
    linear.weight.data = torch.randn(96, 64, generator=g)
    dense = dict(linear.state_dict())
    x = torch.randn(2, 5, 64, generator=g)
    expected = torch.nn.functional.linear(x, dense["weight"], dense["bias"])
    linear.pack(16)
    assert linear.weight.is_mkldnn
    torch.testing.assert_close(linear(x), expected, atol=1e-4, rtol=1e-4)
    for rows in (1, 3, 40):  # any row count, whatever the hint
        torch.testing.assert_close(linear(x[0, :1].expand(rows, 64)), expected[0, :1].expand(rows, 96))
    assert all(torch.equal(v, dense[k]) for k, v in linear.state_dict().items())
    assert not any(v.is_mkldnn for v in linear.state_dict().values())
    # loading new weights packs them: the packed copy never goes stale
    other = {"weight": torch.randn(96, 64, generator=g), "bias": torch.randn(96, generator=g)}
    linear.load_state_dict(other)
    assert linear.weight.is_mkldnn
    torch.testing.assert_close(linear(x), torch.nn.functional.linear(x, **other), atol=1e-4, rtol=1e-4)


@torch.inference_mode()
@pytest.mark.parametrize("n_rows", [1, 11, 300])
def test_a_packed_linears_fused_gelu_and_residual_add_give_the_unfused_values(n_rows):
    g = torch.Generator().manual_seed(n_rows)
    linear = Linear(64, 256)
    torch.nn.init.normal_(linear.weight, generator=g)
    linear.pack(16)
    x, residual = torch.randn(1, n_rows, 64, generator=g), torch.randn(1, n_rows, 256, generator=g)
    assert torch.equal(linear_gelu(linear, x), torch.nn.functional.gelu(linear(x)))
    assert torch.equal(linear_add(linear, x, residual), residual + linear(x))


@torch.inference_mode()
def test_a_packed_model_gives_the_logits_of_the_dense_one():
    packed = random_model(seed=5)
    dense = random_model(seed=5)
    for module in dense.model.modules():  # unpack: the default kernels, same values
        if isinstance(module, Linear) and module.weight.is_mkldnn:
            module.weight = torch.nn.Parameter(module.weight.to_dense(), requires_grad=False)
            module.rows = 0
    dense.model.decoder.set_head(None)
    mel = torch.randn(1, packed.dims.n_mels, 2 * packed.dims.n_audio_ctx)
    tokens = torch.tensor([[50257, 400, 370, 452]])
    logits = []
    for m in (packed, dense):
        features = m.model.encoder(mel)
        logits.append(m.model.decoder(tokens, m.model.decoder.new_cache(features, 1)))
    torch.testing.assert_close(logits[0], logits[1], atol=1e-4, rtol=1e-4)


@torch.inference_mode()
def test_int8_weights_stay_within_their_rounding_of_the_dense_product():
    g = torch.Generator().manual_seed(4)
    weight, bias = torch.randn(200, 64, generator=g) * 0.1, torch.randn(200, generator=g)
    x = torch.randn(3, 64, generator=g)
    expected = torch.nn.functional.linear(x, weight, bias)
    layer = cheap_linear(weight, bias, torch.int8)
    assert isinstance(layer, Int8Linear)
    got = layer(x)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    # each weight is off by at most half a step of its row's scale; bf16 inputs add ~0.4% more
    scale = weight.abs().amax(dim=1) / 127
    bound = 0.5 * scale * x.abs().sum(dim=1, keepdim=True) + 0.01 * (x.abs() @ weight.abs().T) + 0.02
    assert (got - expected).abs().le(bound).all()
    assert not torch.equal(got, expected)  # it is the int8 path, not a copy of the dense one
    # a width the kernel cannot take (a multiple of 16 is needed) falls back to fp16 weights
    assert isinstance(cheap_linear(weight[:, :40], bias, torch.int8), CastLinear)


@torch.inference_mode()
def test_cross_attention_over_cheaper_keys_and_values_stays_close():
    g = torch.Generator().manual_seed(5)
    q = torch.randn(3, 4, 2, 16, generator=g)
    k, v = torch.randn(1, 4, 50, 16, generator=g), torch.randn(1, 4, 50, 16, generator=g)
    exact = cross_attend(q, k, v)  # 3 rows folded over one audio
    rows_k, rows_v = k.expand(3, -1, -1, -1), v.expand(3, -1, -1, -1)
    expected = torch.nn.functional.scaled_dot_product_attention(q, rows_k, rows_v)
    torch.testing.assert_close(exact, expected, atol=1e-5, rtol=1e-5)
    cheap = cross_attend(q, k.bfloat16(), v.bfloat16())
    assert cheap.dtype == torch.float32
    torch.testing.assert_close(cheap, expected, atol=0.05, rtol=0.05)


@torch.inference_mode()
def test_an_int8_self_draft_proposes_the_targets_tokens_on_a_peaky_model():
    m = random_model(seed=6, scale=8.0)
    draft = self_draft_decoder(m, torch.int8)
    assert isinstance(draft.head, Int8Linear)
    features = _features(m)
    tokens = torch.tensor([[50257, 400, 370, 452, 7177, 6280]])
    target_logits = m.model.decoder(tokens, m.model.decoder.new_cache(features, 1))
    draft_logits = draft(tokens, draft.new_cache(features, 1))
    assert torch.equal(target_logits.argmax(-1), draft_logits.argmax(-1))


@torch.inference_mode()
def test_crop_then_new_tokens_equals_fresh_decoding(tiny):
    """Speculative rollback: positions after the crop are forgotten, and overwritten by what comes next."""
    decoder = tiny.model.decoder
    features = _features(tiny, seed=3)
    cache = decoder.new_cache(features, 1)
    decoder(torch.tensor([[50257, 1, 2, 3, 4, 5, 6, 7]]), cache)
    cache.crop(5)
    assert cache.length == 5
    after_crop = decoder(torch.tensor([[900, 901, 902]]), cache)
    fresh = decoder(torch.tensor([[50257, 1, 2, 3, 4, 900, 901, 902]]), decoder.new_cache(features, 1))
    torch.testing.assert_close(after_crop, fresh[:, 5:], atol=1e-4, rtol=1e-4)


@torch.inference_mode()
def test_reorder_moves_rows_like_beam_search(tiny):
    decoder = tiny.model.decoder
    features = _features(tiny, seed=4)
    rows = [[50257, 10, 11, 12], [50257, 20, 21, 22], [50257, 30, 31, 32]]
    cache = decoder.new_cache(features, 3)
    decoder(torch.tensor(rows), cache)
    cache.reorder(torch.tensor([2, 0, 0]))
    step = decoder(torch.tensor([[7], [8], [9]]), cache)
    expected_rows = [rows[2] + [7], rows[0] + [8], rows[0] + [9]]
    for i, row in enumerate(expected_rows):
        fresh = decoder(torch.tensor([row]), decoder.new_cache(features, 1))
        torch.testing.assert_close(step[i, -1], fresh[0, -1], atol=1e-4, rtol=1e-4)


def test_cache_rejects_bad_crop_reorder_and_overflow(tiny):
    decoder = tiny.model.decoder
    cache = decoder.new_cache(_features(tiny), 2)
    with pytest.raises(ValueError, match="crop"):
        cache.crop(1)
    with pytest.raises(ValueError, match="1 to 2 indices"):
        cache.reorder(torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="overflow"):
        cache.reserve(tiny.dims.n_text_ctx + 1)


def test_suppress_filters():
    logits = torch.zeros(2, 10)
    SuppressTokens([1, 3, 99], n_vocab=10).apply(logits, [[0], [0]])
    assert math.isinf(logits[0, 1]) and math.isinf(logits[1, 3]) and logits[0, 2] == 0
    logits = torch.zeros(2, 10)
    SuppressAtBegin([5, 6], sample_begin=2).apply(logits, [[0, 1], [0, 1, 4]])
    assert math.isinf(logits[0, 5]) and math.isinf(logits[0, 6])
    assert not torch.isinf(logits[1]).any(), "only the first sampled position is affected"


def _ts_rules(sample_begin=1, max_initial=None):
    # vocabulary: text 0..4, eot 5, no_timestamps 6, timestamps 7..19
    return ApplyTimestampRules(
        eot=5,
        no_timestamps=6,
        timestamp_begin=7,
        sample_begin=sample_begin,
        max_initial_timestamp_index=max_initial,
    )


def test_timestamp_rules_first_token_is_an_early_timestamp():
    logits = torch.zeros(1, 20)
    _ts_rules(max_initial=2).apply(logits, [[99]])
    allowed = (~torch.isinf(logits[0])).nonzero().flatten().tolist()
    assert allowed == [7, 8, 9]


def test_timestamp_rules_pairs_and_monotonicity():
    rules = _ts_rules()
    # after <|t=2|> text <|t=4|>: a closing timestamp; next must be a timestamp >= 4 or EOT, no text
    # (text and EOT get high logits so the "timestamps dominate" rule stays out of the way)
    logits = torch.zeros(1, 20)
    logits[0, :6] = 5.0
    rules.apply(logits, [[99, 9, 1, 11]])
    allowed = (~torch.isinf(logits[0])).nonzero().flatten().tolist()
    assert allowed == [5, *range(11, 20)]
    # after a pair <|4|><|4|>: text next, timestamps forbidden
    logits = torch.zeros(1, 20)
    rules.apply(logits, [[99, 9, 1, 11, 11]])
    allowed = (~torch.isinf(logits[0])).nonzero().flatten().tolist()
    assert allowed == [0, 1, 2, 3, 4, 5]
    # after text following a start timestamp <|4|>: a later timestamp may close it, never an earlier one
    logits = torch.zeros(1, 20)
    logits[0, :6] = 5.0
    rules.apply(logits, [[99, 11, 2]])
    assert torch.isinf(logits[0, 7:12]).all() and not torch.isinf(logits[0, 12:]).any()
    assert not torch.isinf(logits[0, :6]).any() and torch.isinf(logits[0, 6])


def test_timestamp_rules_force_a_timestamp_when_they_dominate():
    logits = torch.zeros(1, 20)
    logits[0, 7:] = 2.0  # 13 timestamps each as likely as the best text token, together far more
    _ts_rules().apply(logits, [[99, 8, 1]])
    assert torch.isinf(logits[0, :7]).all()


@pytest.mark.parametrize("seed", range(20))
def test_timestamp_dominance_on_logits_decides_as_openai_on_log_probabilities(seed):
    """The rule compares logits; openai compares log-probabilities (log-softmax first): the same decision."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(64, 20, generator=generator) * 4
    logits[:, 7:] += torch.linspace(-6, 4, 64)[:, None]  # from text clearly ahead to timestamps clearly ahead
    logits[:, 6] = float("-inf")  # <|notimestamps|>: the one other rule after a text token
    edited = logits.clone()
    _ts_rules().apply(edited, [[99, 1]] * 64)
    logprobs = torch.log_softmax(logits, dim=-1)
    openai = torch.logsumexp(logprobs[:, 7:], dim=-1) > logprobs[:, :7].max(dim=-1).values
    ours = torch.isinf(edited[:, :5]).all(dim=-1)
    assert openai.any() and not openai.all(), "both outcomes are exercised"
    assert torch.equal(ours, openai)


def test_rows_use_their_own_prefixes():
    """Speculative verification applies the rules per position; each row sees only its own prefix."""
    rules = _ts_rules()
    batch = torch.zeros(2, 20)
    rules.apply(batch, [[99], [99, 8, 1]])
    one = torch.zeros(1, 20)
    rules.apply(one, [[99]])
    two = torch.zeros(1, 20)
    rules.apply(two, [[99, 8, 1]])
    assert torch.equal(batch, torch.cat([one, two]))


def test_decoding_options_are_validated_with_allowed_values():
    with pytest.raises(InvalidOptionError, match="transcribe, translate"):
        DecodingOptions(task="summarize")
    with pytest.raises(InvalidOptionError, match="sample_len"):
        DecodingOptions(sample_len=0)
    options = DecodingOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.task = "translate"  # type: ignore[misc]


def test_english_only_model_refuses_translation(tiny):
    with pytest.raises(InvalidOptionError, match="English-only"):
        check_options(tiny, DecodingOptions(task="translate"))


@pytest.mark.parametrize("timestamps", [False, True])
def test_greedy_loop_matches_naive_recomputation(timestamps):
    """The cached loop gives the tokens a cache-free reference (full forward each step) gives."""
    m = random_model(seed=5, scale=4.0)
    features = _features(m, seed=5)
    task = DecodingTask(m, DecodingOptions(timestamps=timestamps, sample_len=12), "en")
    result = task.run(features)
    decoder = m.model.decoder
    tokens = list(task.initial_tokens)
    expected = []
    with torch.inference_mode():
        for _ in range(12):
            logits = decoder(torch.tensor([tokens]), decoder.new_cache(features, 1))[0, -1:].clone()
            for f in task.filters:
                f.apply(logits, [tokens])
            nxt = int(logits.argmax())
            if nxt == m.tokenizer.eot:
                break
            tokens.append(nxt)
            expected.append(nxt)
    assert result.tokens == expected
    assert len(result.tokens) >= 2, "a vacuous comparison proves nothing"
    assert result.n_target_passes == len(result.tokens) + (0 if len(result.tokens) == 12 else 1)


def test_length_limit_and_context_limit():
    m = random_model(seed=6, dims=random_dims(n_text_ctx=16))
    task = DecodingTask(m, DecodingOptions(timestamps=False, sample_len=100), "en", previous_tokens=[1, 2, 3])
    assert task.initial_tokens[0] == m.tokenizer.sot_prev
    assert task.sample_len == 16 - task.sample_begin
    result = task.run(_features(m, seed=6))
    assert len(result.tokens) <= task.sample_len


def test_split_by_timestamps():
    tb = 100
    # <0.00> a b <1.00> <1.00> c <2.00> : one complete segment, then one ended by a lone timestamp
    tokens = [tb, 1, 2, tb + 50, tb + 50, 3, tb + 100]
    pieces, advance = _split_by_timestamps(tokens, tb, segment_size=3000)
    assert [(p, s, e) for p, s, e in pieces] == [
        ([tb, 1, 2, tb + 50], 0.0, 1.0),
        ([tb + 50, 3, tb + 100], 1.0, 2.0),
    ]
    assert advance == 3000, "a single timestamp ending means the whole window was transcribed"
    # complete segment then an unfinished one: seek to the last complete segment's end
    tokens = [tb, 1, tb + 50, tb + 60, 2]
    pieces, advance = _split_by_timestamps(tokens, tb, segment_size=3000)
    assert pieces == [([tb, 1, tb + 50], 0.0, 1.0)]
    assert advance == 100, "1.00 s = 100 mel frames"
    # no timestamps at all: one piece for the whole window
    pieces, advance = _split_by_timestamps([1, 2, 3], tb, segment_size=1234)
    assert pieces == [([1, 2, 3], 0.0, None)] and advance == 1234
