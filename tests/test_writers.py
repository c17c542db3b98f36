"""Output writers: timestamp formats, escaping, JSON safety, format selection, atomic writes, safe paths."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest

from asr import writers
from asr.errors import InvalidOptionError
from asr.figures import RunStats, StageTimes
from asr.results import Segment, TranscriptionResult
from asr.writers import (
    FORMATS,
    format_json,
    format_srt,
    format_timestamp,
    format_tsv,
    format_txt,
    format_vtt,
    output_paths,
    resolve_formats,
    safe_output_stem,
    write_atomic,
    write_result,
)


def figures(**values: Any) -> RunStats:
    return RunStats("base", "none", None, "adaptive", None, "cpu", "float32", **values)


def make_result(*spans: tuple[float, float, str], stats: RunStats | None = None) -> TranscriptionResult:
    segments = [
        Segment(id=i, start=start, end=end, text=text, tokens=[50364 + i, 100 + i])
        for i, (start, end, text) in enumerate(spans)
    ]
    return TranscriptionResult(
        text="".join(s.text for s in segments),
        language="en",
        segments=segments,
        duration_s=max((s.end for s in segments), default=0.0),
        stats=stats if stats is not None else figures(target_passes=3, time_s=StageTimes(decode=0.25)),
    )


def no_temp_files(directory: Path) -> bool:
    return not [p for p in directory.rglob("*") if p.name.endswith(".tmp")]


# --- timestamps ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0.0, "00:00:00.000"),
        (59.999, "00:00:59.999"),
        (3661.5, "01:01:01.500"),
        (40000.25, "11:06:40.250"),  # more than 10 hours
        (360000.0, "100:00:00.000"),  # hours grow instead of wrapping at 100
        (59.9996, "00:01:00.000"),  # rounding carries into the minutes
        (-0.5, "00:00:00.000"),
        (float("nan"), "00:00:00.000"),
    ],
)
def test_format_timestamp(seconds: float, expected: str) -> None:
    assert format_timestamp(seconds) == expected
    assert format_timestamp(seconds, marker=",") == expected.replace(".", ",")


def test_srt_numbering_and_comma_timestamps() -> None:
    result = make_result((0.0, 59.999, " Hello."), (3661.5, 3662.0, " World."), (40000.25, 40001.0, " Late."))
    assert format_srt(result) == (
        "1\n00:00:00,000 --> 00:00:59,999\nHello.\n\n"
        "2\n01:01:01,500 --> 01:01:02,000\nWorld.\n\n"
        "3\n11:06:40,250 --> 11:06:41,000\nLate.\n"
    )


def test_srt_skips_empty_segments_and_keeps_numbering_consecutive() -> None:
    result = make_result((0.0, 1.0, " one"), (1.0, 2.0, "   "), (2.0, 3.0, " three"))
    lines = format_srt(result).splitlines()
    assert lines[0] == "1"
    assert lines[4] == "2"
    assert lines[6] == "three"
    assert "3" not in lines


def test_vtt_header_and_dot_timestamps() -> None:
    result = make_result((0.0, 59.999, " Hello."), (3661.5, 3662.0, " World."))
    text = format_vtt(result)
    assert text.startswith("WEBVTT\n\n")
    assert text == (
        "WEBVTT\n\n00:00:00.000 --> 00:00:59.999\nHello.\n\n01:01:01.500 --> 01:01:02.000\nWorld.\n"
    )
    assert "," not in text


def test_vtt_without_segments_is_just_the_header() -> None:
    assert format_vtt(make_result()) == "WEBVTT\n"


def test_cue_end_never_before_start() -> None:
    result = make_result((5.0, 4.0, " backwards"))
    assert "00:00:05,000 --> 00:00:05,000" in format_srt(result)


# --- escaping -----------------------------------------------------------------------------------------------


def test_arrow_in_text_cannot_forge_a_timing_line() -> None:
    result = make_result((0.0, 1.0, " a --> b ---> c\n\n2\n00:00:09,000 --> 00:00:10,000 x"))
    srt, vtt = format_srt(result), format_vtt(result)
    assert srt.count("-->") == 1  # only the real timing line
    assert vtt.count("-->") == 1
    assert "-->" not in format_tsv(result)
    assert srt.count("\n\n") == 0  # a blank line inside a cue would end it early
    assert vtt.count("\n\n") == 1  # only the one after the header


def test_vtt_escapes_markup() -> None:
    vtt = format_vtt(make_result((0.0, 1.0, " <b>R&D</b> ")))
    assert vtt.endswith("&lt;b&gt;R&amp;D&lt;/b&gt;\n")


def test_tsv_integer_milliseconds_and_no_stray_tabs() -> None:
    result = make_result((0.0, 1.5, " first\tpart\nsecond line "), (3661.5, 3662.0005, " two"))
    rows = format_tsv(result).splitlines()
    assert rows[0] == "start\tend\ttext"
    assert rows[1] == "0\t1500\tfirst part second line"
    assert rows[2] == "3661500\t3662000\ttwo"
    for row in rows:
        assert row.count("\t") == 2
    start, end, _ = rows[2].split("\t")
    assert int(start) == 3661500 and int(end) == 3662000


def test_txt_one_stripped_segment_per_line() -> None:
    result = make_result((0.0, 1.0, " Hello there. "), (1.0, 2.0, "  "), (2.0, 3.0, " Bye."))
    assert format_txt(result) == "Hello there.\nBye.\n"


def test_txt_falls_back_to_text_without_segments() -> None:
    result = TranscriptionResult(
        text="  only text ", language="en", segments=[], duration_s=1.0, stats=figures()
    )
    assert format_txt(result) == "only text\n"


# --- unicode and json ---------------------------------------------------------------------------------------


def test_unicode_preserved_in_every_format() -> None:
    result = make_result((0.0, 2.0, " こんにちは、世界。"), (2.0, 4.0, " Größe, Übung, schön."))
    for fmt in FORMATS:
        text = writers._FORMATTERS[fmt](result)
        assert "こんにちは、世界。" in text, fmt
        assert "Größe, Übung, schön." in text, fmt
    assert "\\u" not in format_json(result)  # ensure_ascii=False


def test_json_round_trip() -> None:
    result = make_result((0.0, 1.25, " Hello."), (1.25, 2.5, " World."))
    data = json.loads(format_json(result))
    assert data["text"] == " Hello. World."
    assert data["language"] == "en"
    assert data["duration_s"] == 2.5
    assert [s["text"] for s in data["segments"]] == [" Hello.", " World."]
    assert data["segments"][1]["start"] == 1.25
    assert data["segments"][0]["tokens"] == [50364, 100]
    stats = data["stats"]
    assert stats["target_passes"] == 3 and stats["time_s"]["decode"] == 0.25 and stats["draft"] == "none"
    assert stats.keys() == {f.name for f in dataclasses.fields(RunStats)}


def test_json_non_finite_floats_become_null() -> None:
    result = make_result(
        (0.0, 1.0, " x"),
        stats=figures(
            speedup=float("inf"), acceptance_rate=float("nan"), time_s=StageTimes(draft=float("-inf"))
        ),
    )
    result.segments[0].avg_logprob = float("-inf")
    text = format_json(result)

    def reject(token: str) -> None:
        raise AssertionError(f"non-standard JSON constant {token}")

    data = json.loads(text, parse_constant=reject)
    stats = data["stats"]
    assert stats["speedup"] is None and stats["acceptance_rate"] is None and stats["time_s"]["draft"] is None
    assert data["segments"][0]["avg_logprob"] is None


def test_json_numpy_stats() -> None:
    np = pytest.importorskip("numpy")
    result = make_result(
        (0.0, 1.0, " x"),
        stats=figures(acceptance_rate=np.float32(0.5), n_tokens=np.int64(7), speedup=np.float64("nan")),
    )
    data = json.loads(format_json(result))
    stats = data["stats"]
    assert (stats["acceptance_rate"], stats["n_tokens"], stats["speedup"]) == (0.5, 7, None)


# --- choosing formats ---------------------------------------------------------------------------------------


def test_resolve_formats() -> None:
    assert resolve_formats("all") == FORMATS
    assert resolve_formats("srt") == ("srt",)
    assert resolve_formats("srt,json") == ("srt", "json")
    assert resolve_formats(" SRT , vtt,srt ") == ("srt", "vtt")
    assert set(resolve_formats("txt,all")) == set(FORMATS)


@pytest.mark.parametrize("bad", ["docx", "srt,docx", "", "srt,", "all,,txt"])
def test_resolve_formats_unknown_lists_allowed_values(bad: str) -> None:
    with pytest.raises(InvalidOptionError) as excinfo:
        resolve_formats(bad)
    message = str(excinfo.value)
    for name in (*FORMATS, "all"):
        assert name in message
    assert isinstance(excinfo.value, ValueError)


def test_output_paths_append_extension() -> None:
    paths = output_paths(Path("out/talk.v2"), ("srt", "json"))
    assert paths == {"srt": Path("out/talk.v2.srt"), "json": Path("out/talk.v2.json")}
    with pytest.raises(InvalidOptionError):
        output_paths(Path("out/x"), ["mp3"])


# --- atomic writing -----------------------------------------------------------------------------------------


def test_write_atomic_writes_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "new" / "dir" / "a.srt"
    write_atomic(target, "héllo 世界\n")
    assert target.read_bytes() == "héllo 世界\n".encode()
    assert no_temp_files(tmp_path)
    write_atomic(target, "second\n")
    assert target.read_text(encoding="utf-8") == "second\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.srt"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_write_atomic_uses_normal_file_mode(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        target = tmp_path / "a.txt"
        write_atomic(target, "x")
        assert target.stat().st_mode & 0o777 == 0o644  # not the 0o600 of a temp file
        target.chmod(0o640)
        write_atomic(target, "y")
        assert target.stat().st_mode & 0o777 == 0o640  # an existing file keeps its mode
    finally:
        os.umask(old)


def test_write_atomic_failed_replace_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_replace(src: object, dst: object) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(writers.os, "replace", broken_replace)
    target = tmp_path / "a.json"
    with pytest.raises(OSError, match="disk on fire"):
        write_atomic(target, "{}")
    assert list(tmp_path.iterdir()) == []


def test_write_atomic_failure_mid_write_keeps_old_content(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    target.write_text("old\n", encoding="utf-8")
    with pytest.raises(UnicodeEncodeError):
        write_atomic(target, "new text then a lone surrogate \ud800")
    assert target.read_text(encoding="utf-8") == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_write_result_writes_all_formats_json_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    order: list[str] = []
    real_write = writers.write_atomic

    def recording_write(path: Path, text: str) -> None:
        order.append(path.suffix)
        real_write(path, text)

    monkeypatch.setattr(writers, "write_atomic", recording_write)
    result = make_result((0.0, 1.0, " Hallo Welt."))
    stem = tmp_path / "sub" / "talk"
    paths = write_result(result, stem, resolve_formats("all"))
    assert order[-1] == ".json"
    assert sorted(order) == sorted("." + f for f in FORMATS)
    assert {p.name for p in paths} == {f"talk.{f}" for f in FORMATS}
    for path in paths:
        assert path.is_file()
    assert json.loads((tmp_path / "sub" / "talk.json").read_text(encoding="utf-8"))["text"] == " Hallo Welt."
    assert no_temp_files(tmp_path)


def test_write_result_format_error_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_dumps(*args: object, **kwargs: object) -> str:
        raise TypeError("not serializable")

    monkeypatch.setattr(writers.json, "dumps", broken_dumps)
    with pytest.raises(TypeError):
        write_result(make_result((0.0, 1.0, " x")), tmp_path / "talk", ("srt", "json"))
    assert list(tmp_path.iterdir()) == []


def test_write_result_failure_removes_stale_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stem = tmp_path / "talk"
    write_result(make_result((0.0, 1.0, " old")), stem, ("srt", "json"))
    assert (tmp_path / "talk.json").exists()
    real_write = writers.write_atomic

    def failing_srt(path: Path, text: str) -> None:
        if path.suffix == ".srt":
            raise OSError("no space left")
        real_write(path, text)

    monkeypatch.setattr(writers, "write_atomic", failing_srt)
    with pytest.raises(OSError, match="no space"):
        write_result(make_result((0.0, 1.0, " new")), stem, ("srt", "json"))
    # the old JSON must not vouch for an srt this run failed to write
    assert not (tmp_path / "talk.json").exists()
    assert no_temp_files(tmp_path)


# --- safe output paths --------------------------------------------------------------------------------------


def test_safe_output_stem_nested(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert safe_output_stem(out, Path("a/b/c.wav")) == (out / "a" / "b" / "c").resolve()
    assert safe_output_stem(out, Path("talk.v2.mp3")) == (out / "talk.v2").resolve()
    assert safe_output_stem(out, Path("a/../b.wav")) == (out / "b").resolve()  # stays inside


@pytest.mark.parametrize("bad", ["../x.wav", "a/../../x.wav", "/etc/passwd", "..", ".", "a/..", ""])
def test_safe_output_stem_rejects_escapes(tmp_path: Path, bad: str) -> None:
    out = tmp_path / "out"
    with pytest.raises(InvalidOptionError) as excinfo:
        safe_output_stem(out, Path(bad))
    assert "outside the output folder" in str(excinfo.value)


def test_safe_output_stem_rejects_symlink_outside(tmp_path: Path) -> None:
    out = tmp_path / "out"
    outside = tmp_path / "elsewhere"
    out.mkdir()
    outside.mkdir()
    try:
        (out / "link").symlink_to(outside, target_is_directory=True)
    except (OSError, NotImplementedError):
        pytest.skip("symlinks not supported here")
    with pytest.raises(InvalidOptionError):
        safe_output_stem(out, Path("link/x.wav"))


def test_safe_output_stem_accepts_symlinked_output_dir(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    try:
        (tmp_path / "alias").symlink_to(real, target_is_directory=True)
    except (OSError, NotImplementedError):
        pytest.skip("symlinks not supported here")
    assert safe_output_stem(tmp_path / "alias", Path("a/b.wav")) == real.resolve() / "a" / "b"
