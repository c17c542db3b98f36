"""Live transcription (asr/live.py): each update's tokens are the target's own, LocalAgreement commits
only what two updates agree on and never takes it back, and the previous hypothesis is the draft."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from asr import cli
from asr.audio_io import load_audio
from asr.decoding import DecodingOptions, DecodingTask
from asr.drafting import NoDraft
from asr.errors import InvalidOptionError
from asr.live import HypothesisDrafter, LiveOptions, LiveStream, replay
from asr.models import load_model
from asr.sampling import ARGMAX
from asr.transcribe import transcribe
from tests.util import random_model, wer

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def _stream(model, samples, draft="self", hypothesis=True, update_s=1.0):
    stream = LiveStream(
        model,
        DecodingOptions(draft=draft, language="en"),
        LiveOptions(update_s=update_s, hypothesis_draft=hypothesis),
    )
    commits = list(replay(stream, samples))
    return stream, commits


def test_lookup_proposes_the_hypothesis_where_it_continues():
    drafter = HypothesisDrafter(NoDraft())
    drafter.expect([10, 11, 12, 13, 14], sample_begin=3)
    prompt = [1, 2, 3]
    assert drafter.lookup(prompt, until=6) == [10, 11, 12]
    assert drafter.lookup([*prompt, 10, 11], until=20) == [12, 13, 14]
    # diverged, then back on the hypothesis: found again by its last two tokens
    assert drafter.lookup([*prompt, 99, 12, 13], until=20) == [14]
    assert drafter.lookup([*prompt, 99, 98], until=20) == []
    proposals = drafter.propose([[*prompt, 10]], 6, ARGMAX, [0])
    assert proposals[0].tokens == [11, 12]


def test_accepted_tokens_are_split_between_hypothesis_and_draft():
    """The drafter's own count of accepted tokens equals the loop's, for a window decoded with it."""
    m = random_model(3, scale=8.0)
    features = torch.randn(
        1, m.dims.n_audio_ctx, m.dims.n_audio_state, generator=torch.Generator().manual_seed(1)
    )
    task = DecodingTask(m, DecodingOptions(language="en"), "en")
    plain = task.run(features, None, NoDraft())
    wrong = list(plain.tokens)
    wrong[len(wrong) // 2] = (wrong[len(wrong) // 2] + 1) % 50000  # a hypothesis right only in part
    drafter = HypothesisDrafter(NoDraft())
    drafter.expect(wrong, task.sample_begin)
    result = task.run(features, None, drafter)
    assert result.tokens == plain.tokens  # lossless
    committed = task.initial_tokens + result.tokens
    if len(result.tokens) < task.sample_len:
        committed.append(m.tokenizer.eot)
    from_hypothesis, from_draft = drafter.accepted(committed)
    assert from_draft == 0 and from_hypothesis == result.loop.n_accepted > 0
    assert result.n_target_passes < plain.n_target_passes


def test_updates_are_the_plain_targets_own_on_a_random_model():
    """Every update's hypothesis with the hypothesis draft and the self draft equals plain decoding's of the
    same buffer with the same prompt (the plain run sees the same buffers: its commits are the same)."""
    m = random_model(5, scale=4.0)
    rng = np.random.default_rng(0)
    samples = (rng.standard_normal(16000 * 7) * 0.1).astype(np.float32)
    plain, plain_commits = _stream(m, samples, draft="none", hypothesis=False)
    drafted, drafted_commits = _stream(m, samples, draft="self", hypothesis=True)
    assert [u.hypothesis for u in drafted.stats.updates] == [u.hypothesis for u in plain.stats.updates]
    assert [c.tokens for c in drafted_commits] == [c.tokens for c in plain_commits]
    assert plain.stats.to_dict()["accepted_from_hypothesis"] == 0


def test_options_are_checked():
    m = random_model(0)
    with pytest.raises(InvalidOptionError):
        LiveStream(m, DecodingOptions(beam_size=2))
    with pytest.raises(InvalidOptionError):
        LiveOptions(update_s=0)
    stream = LiveStream(m, DecodingOptions(draft="none", language="en"))
    stream.finish()
    with pytest.raises(InvalidOptionError):
        stream.feed(np.zeros(10, np.float32))


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny.en")


def _check_commits(stream, commits, duration_s):
    assert stream.text == "".join(c.text for c in commits).strip()
    starts = [c.start for c in commits]
    assert starts == sorted(starts)
    for c in commits:
        assert 0 <= c.start <= c.end <= duration_s + 0.05 and c.committed_at >= c.end - 1e-6, c
    assert all(u.buffer_s <= 30.0 for u in stream.stats.updates)
    # English: a commit never ends inside a word (the next one would go on with its letters)
    assert not [n.text for n in commits[1:] if n.text[:1].isalnum()]


@pytest.mark.slow
def test_live_text_is_exact_and_never_retracted(tiny, speech_dir):
    samples = load_audio(speech_dir / "audio/mfa_spontaneous/acoustic_corpus.wav")
    plain, plain_commits = _stream(tiny, samples, draft="none", hypothesis=False)
    drafted, commits = _stream(tiny, samples)
    # exact: every update the target's own, so the same commits
    assert [u.hypothesis for u in drafted.stats.updates] == [u.hypothesis for u in plain.stats.updates]
    assert [(c.tokens, c.start) for c in commits] == [(c.tokens, c.start) for c in plain_commits]
    _check_commits(drafted, commits, len(samples) / 16000)
    # committed text only grows: what was committed after each update is a prefix of the final text
    text_so_far = ""
    for c in commits:
        text_so_far += c.text
        assert drafted.text.startswith(text_so_far.strip())
    offline = transcribe(tiny, samples, temperature=0.0).text
    assert wer(offline, drafted.text) < 0.15
    stats, plain_stats = drafted.stats.to_dict(), plain.stats.to_dict()
    # the hypothesis makes most of the tokens: far fewer target passes than plain decoding
    assert stats["target_passes"] * 3 <= plain_stats["target_passes"]
    assert stats["accepted_from_hypothesis"] > stats["accepted_from_draft"]


@pytest.mark.slow
def test_silence_commits_nothing_and_keeps_the_buffer_small(tiny, speech_dir):
    speech = load_audio(SAMPLES / "weather.wav")
    samples = np.concatenate([speech, np.zeros(16000 * 40, np.float32), speech])
    stream, commits = _stream(tiny, samples, update_s=2.0)
    _check_commits(stream, commits, len(samples) / 16000)
    gap_start, gap_end = len(speech) / 16000 + 0.5, len(speech) / 16000 + 39.5
    assert not [c for c in commits if gap_start < c.start and c.end < gap_end]
    assert stream.text.lower().count("rain") == 2


def run_cli(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_stream_cli_json(capsys, tmp_path):
    code, out, err = run_cli(
        capsys,
        "stream",
        SAMPLES / "weather.wav",
        "--model",
        "tiny.en",
        "--speed",
        "0",
        "--json",
        "--output-dir",
        tmp_path,
        "--format",
        "srt,json",
    )
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["type"] for line in lines[:-1]] == ["commit"] * (len(lines) - 1) and len(lines) > 2
    final = lines[-1]
    assert final["type"] == "final" and "rain" in final["text"]
    assert final["text"] == "".join(line["text"] for line in lines[:-1]).strip()
    for key in (
        "latency_mean_s",
        "latency_p95_s",
        "updates",
        "update_time_mean_s",
        "target_passes",
        "tokens",
    ):
        assert key in final["stats"]
    assert "accepted_from_hypothesis" in final["stats"] and "accepted_from_draft" in final["stats"]
    assert "commit latency" in err
    # the final transcript written as the files: commits joined into the target's own segments
    commits = lines[:-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weather.json", "weather.srt"]
    written = json.loads((tmp_path / "weather.json").read_text())
    assert written["text"] == final["text"] and written["stats"] == final["stats"]
    assert "".join(seg["text"] for seg in written["segments"]) == "".join(c["text"] for c in commits)
    assert 1 <= len(written["segments"]) <= len(commits)
    assert [seg["text"] for seg in written["segments"]] == [seg["text"] for seg in final["segments"]]
    assert (tmp_path / "weather.srt").read_text().count(" --> ") == len(written["segments"])


def test_stream_cli_bad_input(capsys, tmp_path):
    code, out, err = run_cli(capsys, "stream", tmp_path / "missing.wav", "--model", "tiny.en")
    assert code == 1 and out == "" and err.count("\n") == 1 and "missing.wav" in err
    code, _, err = run_cli(capsys, "stream", SAMPLES / "hello.wav", "--speed", "-1")
    assert code == 2 and "--speed" in err
    code, _, err = run_cli(capsys, "stream", SAMPLES / "hello.wav", "--update-s", "0")
    assert code == 2 and "update" in err


def test_commits_end_at_word_boundaries_where_words_are_spaced():
    from asr.live import UNSPACED_LANGUAGES, _continues_word

    assert _continues_word("ers") and _continues_word("2")  # "speak|ers", "20|2"
    assert not _continues_word(" but") and not _continues_word(",") and not _continues_word("")
    assert {"ja", "zh"} <= UNSPACED_LANGUAGES and "en" not in UNSPACED_LANGUAGES
