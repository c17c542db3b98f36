"""The native draft step (asr/draft_kernel.c): built here, close to the target's own logits, on both of its
code paths (AVX2 and portable), and never able to change a transcript."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asr import native_draft
from asr.decoding import DecodingOptions, DecodingTask
from asr.draft_factory import make_drafter
from asr.drafting import NativeSelfDrafter, Window
from asr.model import Whisper
from asr.sampling import GumbelChoice
from tests.util import random_dims, random_model

HAVE_COMPILER = bool(os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc"))
needs_compiler = pytest.mark.skipif(not HAVE_COMPILER, reason="no C compiler on this machine")
# no AVX2: the kernel's portable loops
PORTABLE_FLAGS = ("-O2", "-fopenmp", "-shared", "-fPIC")


def _features(m, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, m.dims.n_audio_ctx, m.dims.n_audio_state, generator=g)


def _teacher_forced(m, lib, tokens, features):
    """The target's exact logits and the native draft's, position by position over `tokens`."""
    decoder = m.model.decoder
    draft = native_draft.NativeDraft(decoder, lib)
    with torch.inference_mode():
        exact = decoder(torch.tensor([tokens]), decoder.new_cache(features, 1))[0]
        cache = decoder.new_cache(features, 1)
        window = draft.window(cache, cache.cross_k, cache.cross_v)
        native = torch.stack([window.feed([token])[0].clone() for token in tokens])
    return exact, native


def test_pack_int8_layout():
    weight = torch.randint(-127, 128, (37, 40), dtype=torch.int8)
    packed = native_draft.pack_int8(weight)
    assert packed.shape == (3, 12, 16, 4)  # 37 rows -> 3 groups; 40 inputs -> 10 blocks of 4 -> 12
    for o in range(37):
        for i in range(40):
            assert packed[o // 16, i // 4, o % 16, i % 4] == weight[o, i]
    assert packed[2, :, 5:].abs().sum() == 0 and packed[:, 10:].abs().sum() == 0  # zero padding


@needs_compiler
def test_the_kernel_builds_here():
    """CI has a C compiler: a silent fall back to PyTorch would lose the draft's speed unnoticed."""
    avx2 = "avx2" in native_draft._cpu_signature().split()
    assert native_draft.build().asr_draft_fast() == avx2
    assert (native_draft.library() is not None) == avx2


@needs_compiler
def test_python_fills_exactly_the_slots_the_kernel_names():
    """The kernel alone orders its tables (asr_draft_layout); Python fills each slot by its name."""
    lib = native_draft.build()
    kernel = native_draft.layout(lib)
    for names in (kernel.layer, kernel.shared, kernel.dims):
        assert names and len(set(names)) == len(names)
    m = random_model(seed=11)
    decoder = m.model.decoder
    draft = native_draft.NativeDraft(decoder, lib)
    with torch.inference_mode():
        cache = decoder.new_cache(_features(m), 1)
        window = draft.window(cache, cache.cross_k, cache.cross_v)
    own = [
        native_draft._window_slots(i, cache, window.cross_kt, window.cross_v)
        for i in range(m.dims.n_text_layer)
    ]
    assert set(draft.layers[0]) | set(own[0]) == set(kernel.layer) and not set(draft.layers[0]) & set(own[0])
    shared = native_draft._shared_weights(decoder)
    assert set(shared) == set(kernel.shared)
    assert set(native_draft.DIMS) == set(kernel.dims)
    filled = native_draft._filled()  # what build() checks a kernel against
    assert [set(filled.layer), set(filled.shared), set(filled.dims)] == [
        set(kernel.layer),
        set(kernel.shared),
        set(kernel.dims),
    ]
    # the tables follow the kernel's order, by name
    for layer, weights in enumerate(draft.layers):
        slots = {**weights, **own[layer]}
        for i, name in enumerate(kernel.layer):
            assert window.table[layer * len(kernel.layer) + i] == slots[name].data_ptr(), name
    for i, name in enumerate(kernel.shared):
        assert draft.global_table[i] == draft.globals[i].data_ptr()
        assert torch.equal(draft.globals[i], shared[name]), name
    assert dict(zip(kernel.dims, draft.dims, strict=True)) == {
        "n_layer": m.dims.n_text_layer,
        "d_model": m.dims.n_text_state,
        "n_head": m.dims.n_text_head,
        "d_ff": 4 * m.dims.n_text_state,
        "n_vocab": m.dims.n_vocab,
        "n_audio_ctx": m.dims.n_audio_ctx,
        "n_ctx": m.dims.n_text_ctx,
    }


@needs_compiler
@pytest.mark.parametrize("n_audio_ctx", [8, 24])  # score rows as long as the audio, or as the text
def test_the_kernels_work_size_is_what_a_step_uses(n_audio_ctx):
    """asr_draft_work_size gives at least its comment's formula, no step writes past it, and steps over the
    whole context write its last float: the size is the step's own."""
    dims = dataclasses.replace(random_dims(n_state=32, n_head=2, n_text_ctx=16), n_audio_ctx=n_audio_ctx)
    m = random_model(seed=12, dims=dims, scale=4.0)
    draft = native_draft.NativeDraft(m.model.decoder, native_draft.build())
    d, d_ff = dims.n_text_state, 4 * dims.n_text_state
    assert draft.work_size >= 6 * d + d_ff + dims.n_text_head * max(n_audio_ctx, dims.n_text_ctx)
    tokens = [m.tokenizer.sot, *range(200, 200 + dims.n_text_ctx - 1)]  # every position of the context
    features = _features(m, 5)
    decoder = m.model.decoder
    with torch.inference_mode():
        roomy_cache, cache = decoder.new_cache(features, 1), decoder.new_cache(features, 1)
        roomy = draft.window(roomy_cache, roomy_cache.cross_k, roomy_cache.cross_v)
        roomy.work = torch.zeros(4 * draft.work_size)
        exact = draft.window(cache, cache.cross_k, cache.cross_v)
        guarded = torch.full((draft.work_size + 64,), float("nan"))
        exact.work = guarded[: draft.work_size]
        for token in tokens:
            assert torch.equal(exact.feed([token]), roomy.feed([token]))
    assert guarded[draft.work_size :].isnan().all()  # nothing written past the size
    assert not guarded[draft.work_size - 1].isnan()  # and all of it used


@needs_compiler
def test_a_kernel_naming_an_unknown_slot_is_refused(tmp_path, monkeypatch):
    """A kernel whose tables Python cannot fill is refused at build with the slot's name, and the self draft
    runs in PyTorch (one warning line)."""
    source = tmp_path / "draft_kernel.c"
    text = native_draft.SOURCE.read_text()
    assert text.count('"fc2.bias"') == 1
    source.write_text(text.replace('"fc2.bias"', '"fc2.bias_v2"'))
    monkeypatch.setattr(native_draft, "SOURCE", source)
    with pytest.raises(OSError, match=r"names slots asr does not fill: layer 'fc2\.bias_v2'"):
        native_draft.build(native_draft.FLAGS, tmp_path / "native")
    patch = (
        f"from pathlib import Path\nfrom asr import native_draft\nnative_draft.SOURCE = Path({str(source)!r})"
    )
    done = _in_a_new_process(f"{patch}\n{_PROBE}", ASR_NATIVE_DRAFT="1", ASR_CACHE_DIR=str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["pytorch", "True"]
    lines = [line for line in done.stderr.splitlines() if "native draft step unavailable" in line]
    assert len(lines) == 1 and "'fc2.bias_v2'" in lines[0] and "Traceback" not in done.stderr


@needs_compiler
@pytest.mark.parametrize("flags", [native_draft.FLAGS, PORTABLE_FLAGS], ids=["avx2", "portable"])
@pytest.mark.parametrize("n_state, n_head", [(32, 2), (40, 2)])  # 40: inputs that need padding
def test_native_logits_follow_the_target(tmp_path, flags, n_state, n_head):
    m = random_model(seed=5, dims=random_dims(n_state=n_state, n_head=n_head), scale=4.0)
    lib = native_draft.build(flags, tmp_path)
    tokens = [m.tokenizer.sot, *range(100, 140)]
    exact, native = _teacher_forced(m, lib, tokens, _features(m, 3))
    # int8 weights (and a 16-bit grid for activations): seen here, 0.8% of the logits' spread on average and
    # 6% at most, over 41 x 51864 logits
    spread, error = exact.std(), (native - exact).abs()
    assert error.mean() < 0.02 * spread and error.max() < 0.12 * spread, (error.mean(), error.max(), spread)
    agree = (native.argmax(-1) == exact.argmax(-1)).float().mean()
    assert agree >= 0.9, agree


@needs_compiler
def test_portable_and_native_builds_agree(tmp_path):
    m = random_model(seed=6, scale=4.0)
    tokens = [m.tokenizer.sot, *range(300, 320)]
    features = _features(m, 4)
    _, fast = _teacher_forced(m, native_draft.build(native_draft.FLAGS, tmp_path), tokens, features)
    _, portable = _teacher_forced(m, native_draft.build(PORTABLE_FLAGS, tmp_path), tokens, features)
    assert (fast - portable).abs().max() < 0.02 * portable.std()


@needs_compiler
@pytest.mark.parametrize("flags", [native_draft.FLAGS, PORTABLE_FLAGS], ids=["avx2", "portable"])
@pytest.mark.parametrize("n_rows", [1, 2, 3, 5])  # pairs and a row alone (the AVX2 products go by two)
def test_rows_stepped_together_equal_each_alone(tmp_path, flags, n_rows):
    """Several rows of one window in one call (the weights read once): bit for bit each row alone, over
    steps where the rows sit at different positions."""
    m = random_model(seed=8, dims=random_dims(n_state=40, n_head=2), scale=4.0)
    draft = native_draft.NativeDraft(m.model.decoder, native_draft.build(flags, tmp_path))
    decoder = m.model.decoder
    with torch.inference_mode():
        cross = decoder.project_audio(_features(m, 5))
        together, alone = [], []
        for windows in (together, alone):
            for r in range(n_rows):
                cache = decoder.cache_with_cross(*cross, n_batch=1)
                windows.append(draft.window(cache, *cross, windows[0] if windows else None))
                windows[-1].feed([50257, *range(100, 100 + r)])  # rows at different positions
        for step in range(6):
            tokens = [200 + 7 * step + r for r in range(n_rows)]
            rows = native_draft.NativeWindow.feed_rows(together, tokens)
            for r, window in enumerate(alone):
                assert torch.equal(rows[r], window.feed([tokens[r]])[0]), (step, r)
    with pytest.raises(ValueError, match="rows of one window"):
        other = draft.window(decoder.cache_with_cross(*cross, n_batch=1), *cross)
        native_draft.NativeWindow.feed_rows([together[0], other], [1, 2])


@needs_compiler
def test_native_rows_of_unequal_length_propose_like_the_pytorch_draft():
    """The native draft's rows (one cache each, agreeing rows drafted once) propose, row by row, what the
    same draft proposes for each sequence alone."""
    m = random_model(seed=9, scale=4.0)
    drafter = make_drafter("self", m)
    assert isinstance(drafter, NativeSelfDrafter)
    features = _features(m, 6)
    sot = m.tokenizer.sot
    sequences = [[sot, 400], [sot, 400, 401, 402], [sot, 400, 401, 402], [sot, 500, 501], [sot, 400, 401]]
    choice = GumbelChoice(3, 1.0)

    def start(n_rows):
        cache = m.model.decoder.new_cache(features, n_batch=1)
        m.model.decoder(torch.tensor([[sot]]), cache)
        drafter.start(Window(features, torch.empty(0), [], cache, [sot], n_rows=n_rows))

    with torch.inference_mode():
        start(len(sequences))
        together = drafter.propose(sequences, 6, choice, list(range(len(sequences))))
        for r, sequence in enumerate(sequences):
            start(len(sequences))
            (alone,) = drafter.propose([sequence], 6, choice, [r])
            assert together[r].tokens == alone.tokens, r
            assert len(sequence) + len(alone.tokens) == 6 or m.tokenizer.eot in alone.tokens


@needs_compiler
def test_feeding_several_tokens_equals_one_at_a_time():
    m = random_model(seed=7)
    lib = native_draft.library()
    draft = native_draft.NativeDraft(m.model.decoder, lib)
    features = _features(m)
    decoder = m.model.decoder
    with torch.inference_mode():
        a, b = decoder.new_cache(features, 1), decoder.new_cache(features, 1)
        wa, wb = draft.window(a, a.cross_k, a.cross_v), draft.window(b, b.cross_k, b.cross_v)
        together = wa.feed([50257, 400, 401, 402]).clone()
        for token in [50257, 400, 401]:
            wb.feed([token])
        apart = wb.feed([402])
    assert a.length == b.length == 4
    assert torch.equal(together, apart)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        wa.feed([m.dims.n_vocab])


@needs_compiler
def test_make_drafter_uses_the_native_step_for_greedy_only():
    m = random_model(seed=8)
    greedy = make_drafter("self", m)
    assert isinstance(greedy, NativeSelfDrafter) and greedy.step == "native"
    again = make_drafter("self", m)
    assert isinstance(again, NativeSelfDrafter) and again.native is greedy.native  # built once per target
    beams = make_drafter("self", m, batched=True)
    assert not isinstance(beams, NativeSelfDrafter) and beams.step == "pytorch"


@needs_compiler
def test_a_bfloat16_target_drafts_in_pytorch_and_stays_lossless():
    source = random_model(seed=10, scale=4.0)
    heads = {"encoder.n_head": torch.tensor(2), "decoder.n_head": torch.tensor(2)}
    model = Whisper.from_state_dict({**source.model.state_dict(), **heads}, "cpu", torch.bfloat16)
    m = dataclasses.replace(source, model=model)
    assert m.dtype == torch.bfloat16
    drafter = make_drafter("self", m)
    assert not isinstance(drafter, NativeSelfDrafter) and drafter.step == "pytorch"
    options = DecodingOptions(sample_len=12)
    features = _features(m).to(torch.bfloat16)
    plain, spec = (
        DecodingTask(m, options, "en", None).run(features, None, d)
        for d in (make_drafter("none", m), drafter)
    )
    assert spec.tokens == plain.tokens and spec.loop.n_proposed > 0


@needs_compiler
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    n_head=st.sampled_from([1, 2, 4]),
    scale=st.sampled_from([1.0, 4.0, 16.0]),
    timestamps=st.booleans(),
    k=st.one_of(st.none(), st.integers(1, 8)),
)
def test_native_self_draft_is_lossless(seed, n_head, scale, timestamps, k):
    """Whatever the kernel proposes, the transcript is the plain target's, token for token."""
    m = random_model(seed=seed, dims=random_dims(n_state=32, n_head=n_head), scale=scale)
    features = _features(m, seed)
    options = DecodingOptions(timestamps=timestamps, sample_len=20, draft_k=k)
    plain = DecodingTask(m, options, "en", None).run(features, None, make_drafter("none", m))
    drafter = make_drafter("self", m)
    assert isinstance(drafter, NativeSelfDrafter)
    spec = DecodingTask(m, options, "en", None).run(features, None, drafter)
    assert spec.tokens == plain.tokens
    assert spec.loop.n_proposed == 0 or spec.loop.n_accepted > 0 or len(plain.tokens) < 3


def _in_a_new_process(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, timeout=300
    )


_PROBE = """
import logging
logging.basicConfig(level=logging.INFO)
from asr.decoding import DecodingOptions, DecodingTask
from asr.draft_factory import make_drafter
from tests.test_native_draft import _features
from tests.util import random_model
m = random_model(seed=1, scale=4.0)
options = DecodingOptions(sample_len=12)
def run(draft):
    return DecodingTask(m, options, "en", None).run(_features(m), None, draft)
d = make_drafter("self", m)
spec = run(d)
print(d.step, spec.tokens == run(make_drafter("none", m)).tokens)
"""


@needs_compiler
@pytest.mark.parametrize("setting, used", [("", "pytorch"), ("1", "native")])
def test_without_avx2_pytorch_drafts_unless_forced(tmp_path, setting, used):
    """The portable loops are slower than the PyTorch draft: by default a CPU without AVX2 keeps PyTorch."""
    probe = f"from asr import native_draft\nnative_draft.FLAGS = {PORTABLE_FLAGS!r}\n{_PROBE}"
    done = _in_a_new_process(probe, ASR_NATIVE_DRAFT=setting, ASR_CACHE_DIR=str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [used, "True"]
    assert ("no AVX2" in done.stderr) == (setting == "")


def test_disabled_native_step_falls_back_to_pytorch():
    done = _in_a_new_process(_PROBE, ASR_NATIVE_DRAFT="0")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["pytorch", "True"]
    assert "ASR_NATIVE_DRAFT=0" in done.stderr


def test_no_compiler_falls_back_to_pytorch_with_one_line(tmp_path):
    done = _in_a_new_process(_PROBE, CC=str(tmp_path / "no-such-cc"), ASR_CACHE_DIR=str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["pytorch", "True"]
    lines = [line for line in done.stderr.splitlines() if "native draft step unavailable" in line]
    assert len(lines) == 1 and "Traceback" not in done.stderr


@needs_compiler
def test_an_unwritable_cache_builds_for_this_process_only(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    lib = native_draft.build(native_draft.FLAGS, blocker / "native")
    assert lib.asr_draft_abi() == native_draft.ABI
    assert not str(lib._name).startswith(str(blocker))


@needs_compiler
def test_concurrent_native_drafts_keep_to_their_own_windows():
    """The app serves several users at once: drafters sharing one NativeDraft must not mix their states."""
    m = random_model(seed=9, scale=4.0)
    options = DecodingOptions(sample_len=16)

    def decode(seed, draft="self"):
        task = DecodingTask(m, options, "en", None)
        return task.run(_features(m, seed), None, make_drafter(draft, m)).tokens

    plain = [decode(seed, "none") for seed in range(4)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(decode, range(4)))
    assert together == plain
    assert len({tuple(tokens) for tokens in plain}) > 1  # different inputs, different outputs


@needs_compiler
def test_cached_packed_weights_give_the_same_logits(tmp_path):
    """The packed int8 weights are written once and mapped after: the same logits, bit for bit; a damaged
    file is rebuilt, not trusted (issue #22)."""
    m = random_model(seed=7, dims=random_dims(n_state=32, n_head=2), scale=4.0)
    lib = native_draft.build(native_draft.FLAGS, tmp_path)
    decoder, tokens, features = m.model.decoder, [m.tokenizer.sot, *range(100, 110)], _features(m, 1)
    cache = tmp_path / "draft.safetensors"

    def logits(draft):
        with torch.inference_mode():
            kv = decoder.new_cache(features, 1)
            window = draft.window(kv, kv.cross_k, kv.cross_v)
            return torch.stack([window.feed([token])[0].clone() for token in tokens])

    built = native_draft.NativeDraft(decoder, lib, cache)
    assert cache.is_file()
    mapped = native_draft.NativeDraft(decoder, lib, cache)
    assert torch.equal(logits(built), logits(mapped))
    assert torch.equal(mapped.layers[0]["fc1.int8"], built.layers[0]["fc1.int8"])
    cache.write_bytes(b"not a safetensors file")
    rebuilt = native_draft.NativeDraft(decoder, lib, cache)
    assert torch.equal(logits(built), logits(rebuilt))
    assert native_draft._read_quantised(cache) is not None  # written again


def test_the_draft_cache_is_keyed_by_weights_code_and_cpu(monkeypatch):
    a = native_draft.quantised_cache_path("a" * 64)
    assert a != native_draft.quantised_cache_path("b" * 64)
    monkeypatch.setattr(native_draft, "_cpu_signature", lambda: "another CPU")
    assert a != native_draft.quantised_cache_path("a" * 64)
