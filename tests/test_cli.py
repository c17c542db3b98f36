"""The `asr` command: transcript on stdout, one `asr:` line per problem on stderr, exit codes, output folders.

Most tests call `asr.cli.main([...])` in this process, so the bundled model is loaded once
(`asr.models.load_model` caches it); three run `python -m asr.cli` to prove what a real process prints and
returns (stdout holds only the transcript, the exit status, Ctrl-C, no traceback).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import asr.transcribe as transcribe_module
from asr import cli
from asr.writers import FORMATS

REPO_ROOT = Path(__file__).resolve().parent.parent

JFK = "audio/jfk/jfk.wav"
JFK_TEXT = (
    "And so my fellow Americans, ask not what your country can do for you, "
    "ask what you can do for your country."
)
WAIT = "audio/librispeech/1089-134691-0000.flac"  # 2 s
WAIT_TEXT = "HE COULD WAIT NO LONGER"
PROVES = "audio/librispeech/2830-3980-0043.wav"  # 2 s
PROVES_TEXT = "experience proves this"


def normalize(text: str) -> str:
    """Lower case, punctuation dropped, whitespace collapsed: the sources' text conventions differ."""
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


def asr_lines(stderr: str) -> list[str]:
    """The `asr:` report lines of stderr (the progress bar redraws with carriage returns)."""
    lines = re.split(r"[\r\n]+", stderr)
    return [line[line.index("asr: ") :] for line in lines if "asr: " in line]


def all_files(folder: Path) -> set[str]:
    """Every file (or symlink) under `folder`, as POSIX paths relative to it."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir() or p.is_symlink()}


def copy_clip(speech_dir: Path, clip: str, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(speech_dir / clip, dest)
    return dest


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def assert_complete_outputs(stem: Path, expected_text: str, formats: tuple[str, ...] = FORMATS) -> None:
    """Each format of `stem` exists and holds the expected transcript."""
    for fmt in formats:
        assert stem.with_name(f"{stem.name}.{fmt}").is_file(), f"missing {stem.name}.{fmt}"
    if "json" in formats:
        data = read_json(stem.with_name(stem.name + ".json"))
        assert normalize(data["text"]) == normalize(expected_text)
        assert data["segments"], "a transcript of speech has segments"
    if "txt" in formats:
        assert normalize(stem.with_name(stem.name + ".txt").read_text()) == normalize(expected_text)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


class CountingTranscribe:
    """Wraps the real `Transcriber.transcribe`, records the audio paths it is called with, optionally
    interrupts one."""

    def __init__(self, real: Callable, interrupt_on_call: int | None = None) -> None:
        self.real = real
        self.interrupt_on_call = interrupt_on_call
        self.paths: list[Path] = []

    def __call__(self, transcriber, audio):
        self.paths.append(Path(audio))
        if len(self.paths) == self.interrupt_on_call:
            raise KeyboardInterrupt
        return self.real(transcriber, audio)


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> Callable[..., CountingTranscribe]:
    """Install a CountingTranscribe where cli.py finds it: the Transcriber it makes once per run."""
    real = transcribe_module.Transcriber.transcribe

    def install(interrupt_on_call: int | None = None) -> CountingTranscribe:
        wrapper = CountingTranscribe(real, interrupt_on_call)
        monkeypatch.setattr(
            transcribe_module.Transcriber, "transcribe", lambda self, audio: wrapper(self, audio)
        )
        return wrapper

    return install


# --- one file -----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_single_file_prints_only_the_transcript_and_figures_on_stderr(speech_dir, capsys):
    code, out, err = run_cli(capsys, "transcribe", speech_dir / JFK)
    assert code == 0
    assert out.endswith("\n") and out.count("\n") == 1, f"stdout must be one line: {out!r}"
    assert normalize(out) == normalize(JFK_TEXT)
    lines = asr_lines(err)
    assert len(lines) == 1, err
    assert re.search(r"jfk\.wav: 11\.0 s of audio in [\d.]+ s .*\d+ tokens", lines[0]), lines[0]
    assert "Traceback" not in err


@pytest.mark.slow
def test_json_output_has_text_language_segments_and_stats(speech_dir, tmp_path, capsys):
    out_dir = tmp_path / "out"
    code, out, _ = run_cli(
        capsys, "transcribe", speech_dir / WAIT, "--format", "json", "--output-dir", out_dir
    )
    assert code == 0
    assert normalize(out) == normalize(WAIT_TEXT)
    assert all_files(out_dir) == {"1089-134691-0000.json"}
    data = read_json(out_dir / "1089-134691-0000.json")
    assert {"text", "language", "segments", "stats"} <= data.keys()
    assert normalize(data["text"]) == normalize(WAIT_TEXT)
    assert data["language"] == "en"
    assert data["segments"]
    for seg in data["segments"]:
        assert {"start", "end", "text", "tokens"} <= seg.keys()
        assert 0 <= seg["start"] <= seg["end"] <= 2.2
        assert seg["tokens"] and all(isinstance(t, int) for t in seg["tokens"])
    assert "".join(s["text"] for s in data["segments"]).strip() == data["text"]
    assert data["stats"]["time_s"]["total"] > 0


@pytest.mark.slow
def test_format_all_writes_every_format(speech_dir, tmp_path, capsys):
    out_dir = tmp_path / "out"
    code, out, _ = run_cli(
        capsys, "transcribe", speech_dir / PROVES, "--format", "all", "--output-dir", out_dir
    )
    assert code == 0
    assert normalize(out) == normalize(PROVES_TEXT)
    stem = out_dir / "2830-3980-0043"
    assert all_files(out_dir) == {f"2830-3980-0043.{fmt}" for fmt in ("txt", "srt", "vtt", "json", "tsv")}
    assert_complete_outputs(stem, PROVES_TEXT)
    srt = (out_dir / "2830-3980-0043.srt").read_text()
    assert re.match(r"1\n00:00:\d\d,\d{3} --> 00:00:\d\d,\d{3}\n\S", srt), srt
    vtt = (out_dir / "2830-3980-0043.vtt").read_text()
    assert vtt.startswith("WEBVTT\n") and re.search(r"00:00:\d\d\.\d{3} --> 00:00:\d\d\.\d{3}\n", vtt)
    tsv = (out_dir / "2830-3980-0043.tsv").read_text().splitlines()
    assert tsv[0] == "start\tend\ttext" and len(tsv) >= 2
    assert normalize(" ".join(row.split("\t")[2] for row in tsv[1:])) == normalize(PROVES_TEXT)


@pytest.mark.slow
def test_english_only_tiny_en(speech_dir, capsys):
    code, out, err = run_cli(capsys, "transcribe", speech_dir / JFK, "--model", "tiny.en")
    assert code == 0, err
    assert normalize(out) == normalize(JFK_TEXT)
    assert "target tiny.en" in err


def test_models_lists_the_bundled_models_as_available(capsys):
    code, out, err = run_cli(capsys, "models")
    assert code == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    for name in ("tiny.en", "base"):
        assert name in rows, out
        assert rows[name][1:3] == ["bundled", "available"], rows[name]
    assert err == ""


# --- bad input: one line each, named, never a traceback -----------------------------------------------------


def _wav(path: Path, samples: np.ndarray, subtype: str = "PCM_16") -> Path:
    sf.write(path, samples, 16000, subtype=subtype, format="WAV")
    return path


def _tone(seconds: float) -> np.ndarray:
    t = np.arange(int(16000 * seconds)) / 16000
    return (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def _missing(tmp: Path) -> list[str]:
    return [str(tmp / "missing.wav")]


def _folder_without_audio(tmp: Path) -> list[str]:
    (tmp / "docs").mkdir()
    (tmp / "docs" / "notes.txt").write_text("not audio\n")
    return [str(tmp / "docs"), "--output-dir", str(tmp / "out")]


def _empty(tmp: Path) -> list[str]:
    (tmp / "empty.wav").write_bytes(b"")
    return [str(tmp / "empty.wav")]


def _random_bytes(tmp: Path) -> list[str]:
    (tmp / "x.wav").write_bytes(b"\x00junk" + np.random.default_rng(0).bytes(4000))
    return [str(tmp / "x.wav")]


def _cut_in_header(tmp: Path) -> list[str]:
    data = _wav(tmp / "full.wav", _tone(1.0)).read_bytes()
    (tmp / "cut.wav").write_bytes(data[:30])
    return [str(tmp / "cut.wav")]


def _cut_in_data(tmp: Path) -> list[str]:
    data = _wav(tmp / "full.wav", _tone(1.0)).read_bytes()
    (tmp / "cut.wav").write_bytes(data[: len(data) // 2])
    return [str(tmp / "cut.wav")]


def _nan(tmp: Path) -> list[str]:
    samples = _tone(1.0)
    samples[8000:] = np.nan
    _wav(tmp / "nan.wav", samples, subtype="FLOAT")
    return [str(tmp / "nan.wav")]


def _too_long(tmp: Path) -> list[str]:
    _wav(tmp / "long.wav", _tone(2.0))
    return [str(tmp / "long.wav"), "--max-duration", "1"]


def _unknown_model(tmp: Path) -> list[str]:
    return [str(_wav(tmp / "tone.wav", _tone(1.0))), "--model", "nope"]


def _unknown_language(tmp: Path) -> list[str]:
    return [str(_wav(tmp / "tone.wav", _tone(1.0))), "--language", "xx"]


def _unknown_format(tmp: Path) -> list[str]:
    return [str(_wav(tmp / "tone.wav", _tone(1.0))), "--format", "docx"]


def _folder_without_output_dir(tmp: Path) -> list[str]:
    (tmp / "clips").mkdir()
    _wav(tmp / "clips" / "tone.wav", _tone(1.0))
    return [str(tmp / "clips")]


# (make the arguments, the path the line must name or None for an option error, the reason it must give)
BAD_INPUTS = {
    "missing path": (_missing, "missing.wav", r"no such file"),
    "folder without audio": (_folder_without_audio, "docs", r"no audio files"),
    "empty file": (_empty, "empty.wav", r"empty"),
    "random bytes named .wav": (_random_bytes, "x.wav", r"not a recognised audio format"),
    "wav cut inside its header": (_cut_in_header, "cut.wav", r"cannot be decoded|truncated|corrupt"),
    "wav cut inside its data": (_cut_in_data, "cut.wav", r"truncated"),
    "NaN samples": (_nan, "nan.wav", r"NaN"),
    "longer than --max-duration": (_too_long, "long.wav", r"2\.0 s long; the maximum is 1 s"),
    "unknown model": (_unknown_model, None, r"unknown model 'nope'"),
    "unknown language": (_unknown_language, None, r"language 'xx' is not supported.*allowed: en"),
    "unknown format": (_unknown_format, None, r"unknown output format 'docx'.*allowed: txt"),
    "folder without --output-dir": (_folder_without_output_dir, None, r"--output-dir is required"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_gives_one_error_line_and_a_failure_status(case, tmp_path, capsys):
    make_args, named, reason = BAD_INPUTS[case]
    args = make_args(tmp_path)
    code, out, err = run_cli(capsys, "transcribe", *args)
    assert code != 0
    assert out == ""
    assert "Traceback" not in err
    lines = asr_lines(err)
    assert len(lines) == 1, f"expected one asr: line, got {lines}"
    if named is not None:
        assert str(tmp_path / named) in lines[0], lines[0]
    assert re.search(reason, lines[0]), lines[0]
    assert not (tmp_path / "out").exists() or all_files(tmp_path / "out") == set()


def test_option_errors_exit_with_the_usage_status(tmp_path, capsys):
    clip = _wav(tmp_path / "tone.wav", _tone(1.0))
    code, _, _ = run_cli(capsys, "transcribe", clip, "--format", "docx")
    assert code == cli.EXIT_USAGE
    code, _, err = run_cli(capsys, "transcribe", clip, "--model", "tiny.en", "--language", "de")
    assert code == cli.EXIT_USAGE
    assert "English-only" in err


def test_an_output_dir_that_cannot_be_created_fails_before_any_work(tmp_path, capsys, counting):
    calls = counting()
    clip = _wav(tmp_path / "tone.wav", _tone(0.5))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, out, err = run_cli(capsys, "transcribe", clip, "--output-dir", blocker / "out")
    assert code == cli.EXIT_USAGE
    assert out == "" and calls.paths == []
    assert asr_lines(err) == [
        f"asr: error: --output-dir {blocker / 'out'}: cannot create it (Not a directory)"
    ]


def test_unknown_language_fails_once_for_a_whole_batch(tmp_path, capsys, counting):
    """An option error is one problem, reported once, not once per file of the batch."""
    calls = counting()
    (tmp_path / "in").mkdir()
    for name in ("a.wav", "b.wav", "c.wav"):
        _wav(tmp_path / "in" / name, _tone(0.5))
    code, out, err = run_cli(
        capsys, "transcribe", tmp_path / "in", "--language", "xx", "--output-dir", tmp_path / "o"
    )
    assert code == cli.EXIT_USAGE
    assert out == ""
    assert len(asr_lines(err)) == 1, err
    assert calls.paths == []
    assert not (tmp_path / "o").exists()


# --- folders ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_folder_mirrors_the_tree_and_reports_the_corrupt_file(speech_dir, tmp_path, capsys):
    src, out_dir = tmp_path / "in", tmp_path / "out"
    copy_clip(speech_dir, WAIT, src / "wait.flac")
    copy_clip(speech_dir, PROVES, src / "sub" / "clip.wav")
    (src / "sub" / "broken.wav").write_bytes(np.random.default_rng(1).bytes(3000))
    (src / "notes.txt").write_text("not audio\n")

    code, out, err = run_cli(capsys, "transcribe", src, "--output-dir", out_dir)

    assert code == 1
    assert out == "", "a batch writes files, not stdout"
    assert "Traceback" not in err
    broken = str(src / "sub" / "broken.wav")
    lines = asr_lines(err)
    assert any(line.startswith(f"asr: FAILED {broken}: ") for line in lines), lines
    summary = next(i for i, line in enumerate(lines) if re.match(r"asr: \d+ files: ", line))
    assert lines[summary].startswith("asr: 3 files: 2 transcribed, 0 skipped (outputs exist), 1 failed;")
    assert lines[summary + 1 :] == [
        f"asr: failed: {broken}: is not a recognised audio format (or is corrupt)"
    ]
    assert not any("notes.txt" in line for line in lines)
    # Outputs mirror the tree; nothing for the broken file or the text file, and no temp file anywhere.
    expected = {f"wait.{fmt}" for fmt in FORMATS} | {f"sub/clip.{fmt}" for fmt in FORMATS}
    assert all_files(out_dir) == expected
    assert_complete_outputs(out_dir / "wait", WAIT_TEXT)
    assert_complete_outputs(out_dir / "sub" / "clip", PROVES_TEXT)


@pytest.mark.slow
def test_interrupted_batch_resumes_without_redoing_finished_files(speech_dir, tmp_path, capsys, counting):
    src, out_dir = tmp_path / "in", tmp_path / "out"
    first = copy_clip(speech_dir, WAIT, src / "a_first.flac")
    second = copy_clip(speech_dir, PROVES, src / "b_second.wav")
    argv = ["transcribe", src, "--output-dir", out_dir]

    # 1. Ctrl-C while the second file is transcribed: exit 130, the first file's outputs are complete.
    calls = counting(interrupt_on_call=2)
    code, _, err = run_cli(capsys, *argv)
    assert code == cli.EXIT_INTERRUPTED == 130
    assert calls.paths == [first, second]
    assert "interrupted" in asr_lines(err)[-1]
    assert "Traceback" not in err
    assert all_files(out_dir) == {f"a_first.{fmt}" for fmt in FORMATS}, "no output or temp file of the 2nd"
    assert_complete_outputs(out_dir / "a_first", WAIT_TEXT)
    first_json = (out_dir / "a_first.json").read_bytes()

    # 2. The same command again: the first is skipped, only the second is transcribed.
    calls = counting()
    code, _, err = run_cli(capsys, *argv)
    assert code == 0, err
    assert calls.paths == [second]
    assert f"asr: skip {first}: outputs exist" in asr_lines(err)
    assert "1 transcribed, 1 skipped (outputs exist), 0 failed" in err
    assert (out_dir / "a_first.json").read_bytes() == first_json
    assert all_files(out_dir) == {f"{stem}.{fmt}" for stem in ("a_first", "b_second") for fmt in FORMATS}
    assert_complete_outputs(out_dir / "b_second", PROVES_TEXT)

    # 3. --overwrite redoes both.
    calls = counting()
    code, _, err = run_cli(capsys, *argv, "--overwrite")
    assert code == 0, err
    assert calls.paths == [first, second]
    assert "2 transcribed, 0 skipped" in err
    assert all_files(out_dir) == {f"{stem}.{fmt}" for stem in ("a_first", "b_second") for fmt in FORMATS}


@pytest.mark.slow
def test_same_stem_and_symlinked_inputs_keep_their_outputs_apart_inside_the_output_dir(
    speech_dir, tmp_path, capsys
):
    src, out_dir, elsewhere = tmp_path / "in", tmp_path / "out", tmp_path / "elsewhere"
    copy_clip(speech_dir, PROVES, src / "a.wav")
    copy_clip(speech_dir, WAIT, src / "a.flac")
    target = copy_clip(speech_dir, PROVES, elsewhere / "clip.wav")
    (src / "link.wav").symlink_to(target)

    code, _, err = run_cli(capsys, "transcribe", src, "--format", "json", "--output-dir", out_dir)

    assert code == 0, err
    assert all_files(out_dir) == {"a.wav.json", "a.flac.json", "link.json"}
    assert normalize(read_json(out_dir / "a.wav.json")["text"]) == normalize(PROVES_TEXT)
    assert normalize(read_json(out_dir / "a.flac.json")["text"]) == normalize(WAIT_TEXT)
    assert normalize(read_json(out_dir / "link.json")["text"]) == normalize(PROVES_TEXT)
    assert all_files(elsewhere) == {"clip.wav"}, "nothing is written beside a symlink's target"
    assert all_files(src) == {"a.wav", "a.flac", "link.wav"}


def test_symlink_in_the_output_dir_cannot_lead_outputs_out_of_it(tmp_path, capsys, counting):
    """A mirrored subfolder that is a symlink out of --output-dir: that file is refused, the batch goes on."""
    calls = counting(interrupt_on_call=1)  # stop at the first transcription: the plan is what is tested
    src, out_dir, outside = tmp_path / "in", tmp_path / "out", tmp_path / "outside"
    (src / "sub").mkdir(parents=True)
    _wav(src / "sub" / "clip.wav", _tone(0.5))
    top = _wav(src / "top.wav", _tone(0.5))
    outside.mkdir()
    out_dir.mkdir()
    (out_dir / "sub").symlink_to(outside, target_is_directory=True)

    code, out, err = run_cli(capsys, "transcribe", src, "--output-dir", out_dir)

    assert code == cli.EXIT_INTERRUPTED
    assert out == "" and "Traceback" not in err
    lines = asr_lines(err)
    assert lines[0].startswith(f"asr: {src / 'sub' / 'clip.wav'}: ") and "outside" in lines[0], lines
    assert calls.paths == [top], "the refused file is not transcribed; the others still are"
    assert all_files(outside) == set()
    assert all_files(out_dir) == {"sub"}


def test_same_input_twice_is_transcribed_once(tmp_path, capsys, counting):
    """Two inputs that would write the same outputs: the second is reported, never overwrites the first."""
    calls = counting(interrupt_on_call=1)
    clip = _wav(tmp_path / "tone.wav", _tone(0.5))
    code, _, err = run_cli(capsys, "transcribe", clip, clip, "--output-dir", tmp_path / "out")
    assert code == cli.EXIT_INTERRUPTED
    assert calls.paths == [clip]
    assert any("another input already writes to" in line and str(clip) in line for line in asr_lines(err))


@pytest.mark.parametrize("name", ["..wav", "...wav", ".hidden.wav"])
def test_dotted_file_names_are_transcribed_not_refused(name, tmp_path, capsys, counting):
    """A file named "..wav" has the stem "." (the output folder itself): it gets outputs, is not refused."""
    calls = counting(interrupt_on_call=1)
    (tmp_path / "in").mkdir()
    clip = _wav(tmp_path / "in" / name, _tone(0.5))
    code, _, err = run_cli(capsys, "transcribe", tmp_path / "in", "--output-dir", tmp_path / "out")
    assert code == cli.EXIT_INTERRUPTED
    assert calls.paths == [clip]
    assert asr_lines(err) == [
        "asr: interrupted; finished outputs are kept: run the same command again to resume"
    ]


def test_every_broken_file_is_reported_and_the_progress_bar_ends_at_100_percent(tmp_path, capsys, recwarn):
    """Three 1.06-s files whose samples are NaN: each fails on its own; the bar's total is their sum."""
    src = tmp_path / "in"
    src.mkdir()
    names = ("a.wav", "b.wav", "c.wav")
    for name in names:
        _wav(src / name, np.full(16960, np.nan, dtype=np.float32), subtype="FLOAT")

    code, out, err = run_cli(capsys, "transcribe", src, "--output-dir", tmp_path / "out")

    assert code == 1 and out == ""
    lines = asr_lines(err)
    for name in names:
        assert f"asr: FAILED {src / name}: contains NaN or infinite samples (the first at 0.000 s)" in lines
        assert f"asr: failed: {src / name}: contains NaN or infinite samples (the first at 0.000 s)" in lines
    assert "3 files: 0 transcribed, 0 skipped (outputs exist), 3 failed" in err
    # Rounding each file's duration (1.1 s) against a rounded total (3.2 s) used to end at 103%.
    assert re.findall(r"(\d+)%\|", err)[-1] == "100"
    assert not [w for w in recwarn if "clamping" in str(w.message)]


# --- real processes -----------------------------------------------------------------------------------------


def run_process(*argv: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asr.cli", *map(str, argv)],
        cwd=cwd,
        env=process_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def process_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


@pytest.mark.slow
def test_process_stdout_is_only_the_transcript(speech_dir, tmp_path):
    done = run_process("transcribe", speech_dir / PROVES, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") == 1
    assert normalize(done.stdout) == normalize(PROVES_TEXT)
    assert "Traceback" not in done.stderr
    assert re.search(r"2830-3980-0043\.wav: 2\.0 s of audio in", done.stderr)


# These random bytes make libmpg123 (inside libsndfile) print a warning of its own while sniffing the format.
MPG123_NOISE_BYTES = np.random.default_rng(1).bytes(3000)


def test_process_exit_status_for_a_corrupt_file(tmp_path):
    (tmp_path / "x.wav").write_bytes(MPG123_NOISE_BYTES)
    done = run_process("transcribe", "x.wav", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    assert asr_lines(done.stderr) == ["asr: error: x.wav: is not a recognised audio format (or is corrupt)"]


def test_stderr_holds_only_asr_lines_for_a_corrupt_file(tmp_path, capfd):
    """libmpg123 writes to fd 2 itself while libsndfile sniffs these bytes: kept off stderr."""
    (tmp_path / "x.wav").write_bytes(MPG123_NOISE_BYTES)
    code = cli.main(["transcribe", str(tmp_path / "x.wav")])
    _, err = capfd.readouterr()
    assert code == 1
    assert err.splitlines() == asr_lines(err)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process is POSIX")
def test_process_ctrl_c_exits_130_and_keeps_finished_outputs(speech_dir, tmp_path):
    src, out_dir = tmp_path / "in", tmp_path / "out"
    copy_clip(speech_dir, WAIT, src / "a.flac")
    copy_clip(speech_dir, JFK, src / "b.wav")  # 11 s: still being transcribed when the signal arrives
    process = subprocess.Popen(
        [sys.executable, "-m", "asr.cli", "transcribe", str(src), "--output-dir", str(out_dir)],
        cwd=tmp_path,
        env=process_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        seen = []
        for line in process.stderr:  # wait until the first file is done
            seen.append(line)
            if "asr: ok " in line:
                break
        process.send_signal(signal.SIGINT)
        out, rest = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    err = "".join(seen) + rest
    assert process.returncode == 130, err
    assert out == ""
    assert "Traceback" not in err
    assert "interrupted" in asr_lines(err)[-1]
    assert all_files(out_dir) == {f"a.{fmt}" for fmt in FORMATS}
    assert_complete_outputs(out_dir / "a", WAIT_TEXT)


# --- issue #19: found by a hostile probe --------------------------------------------------------------------


def _without_dac_override() -> list[str]:
    """A command prefix under which a chmod 555 folder is unwritable: nothing for a user; for root, drop
    CAP_DAC_OVERRIDE (which ignores permission bits) from the child's capability bounding set."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("root without setpriv: cannot make a folder unwritable for the child")
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]


def test_an_unwritable_output_dir_fails_before_any_decoding(tmp_path):
    src, read_only = tmp_path / "in", tmp_path / "ro"
    src.mkdir()
    for name in ("a.wav", "b.wav"):
        _wav(src / name, _tone(0.5))
    read_only.mkdir()
    read_only.chmod(0o555)
    prefix = _without_dac_override()
    probe = subprocess.run([*prefix, "sh", "-c", f"touch '{read_only}/x'"], capture_output=True, check=False)
    if probe.returncode == 0:
        pytest.skip("this system lets the child write into a chmod 555 folder")
    command = [sys.executable, "-m", "asr.cli", "transcribe", str(src), "--output-dir", str(read_only)]
    try:
        done = subprocess.run(
            [*prefix, *command, "--model", "tiny.en"],
            cwd=tmp_path,
            env=process_env(),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        read_only.chmod(0o755)
    assert done.returncode == cli.EXIT_USAGE, done.stderr
    assert done.stdout == "" and "Traceback" not in done.stderr
    assert asr_lines(done.stderr) == [
        f"asr: error: --output-dir {read_only}: cannot write there (Permission denied)"
    ]
    assert all_files(read_only) == set()


def test_unusable_entries_named_like_audio_are_each_one_failure(tmp_path, capsys, counting):
    calls = counting()
    src = tmp_path / "in"
    src.mkdir()
    _wav(src / "good.wav", _tone(0.5))
    os.mkfifo(src / "fifo.wav")
    (src / "broken.wav").symlink_to(src / "gone.wav")
    (src / "loop.wav").symlink_to(src / "loop.wav")
    (src / "sub.wav").mkdir()  # a folder named like audio is walked into, not an input
    code, out, err = run_cli(capsys, "transcribe", src, "--output-dir", tmp_path / "out", "--format", "txt")
    assert code == cli.EXIT_FAILED and out == ""
    lines = asr_lines(err)
    failed = {line for line in lines if line.startswith("asr: failed: ")}
    assert failed == {
        f"asr: failed: {src / 'broken.wav'}: is a broken symbolic link (its target does not exist)",
        f"asr: failed: {src / 'fifo.wav'}: is not a regular file (the decoder needs to seek; save the stream "
        "first)",
        f"asr: failed: {src / 'loop.wav'}: cannot be accessed (Too many levels of symbolic links)",
    }
    assert sum("asr: FAILED " in line for line in lines) == 3
    assert re.search(r"asr: 4 files: 1 transcribed, 0 skipped \(outputs exist\), 3 failed", err), err
    assert [p.name for p in calls.paths] == ["broken.wav", "fifo.wav", "good.wav", "loop.wav"]


def test_a_file_name_cannot_forge_a_report_line(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    forged = "x.wav\nasr: ok all good: 1.0 s of audio\rx.wav"
    (src / forged).write_bytes(b"not audio at all" * 10)
    code, _, err = run_cli(capsys, "transcribe", src, "--output-dir", tmp_path / "out")
    assert code == cli.EXIT_FAILED
    physical = err.replace("\r", "\n").splitlines()
    assert not any(line.startswith("asr: ok") for line in physical), err
    escaped = str(src / "x.wav\\nasr: ok all good: 1.0 s of audio\\rx.wav")
    assert f"asr: FAILED {escaped}: is not a recognised audio format (or is corrupt)" in physical
    assert f"asr: failed: {escaped}: is not a recognised audio format (or is corrupt)" in physical


def test_escaped_names_keep_printable_text_and_show_everything_else():
    assert cli._escaped("talk é 会议.wav") == "talk é 会议.wav"
    assert cli._escaped("a\tb\x1b[31m\\c\udcff") == "a\\tb\\x1b[31m\\\\c\\udcff"


def test_a_run_removes_temp_files_a_killed_run_left(tmp_path, capsys, counting):
    counting()
    src, out_dir = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    _wav(src / "a.wav", _tone(0.5))
    out_dir.mkdir()
    # What `write_atomic` leaves when the process is killed between creating its temp file and the rename.
    stale = []
    for target in ("a.txt", "a.json"):
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=f".{target}.", suffix=".tmp", delete=False) as f:
            f.write(b"half a transcr")
        stale.append(Path(f.name))
    (out_dir / ".b.txt.k3j_x9q2.tmp").write_text("another input's: not this run's")
    (out_dir / ".a.txt.mine.tmp").write_text("not a name write_atomic makes")
    code, _, err = run_cli(capsys, "transcribe", src, "--output-dir", out_dir, "--format", "txt,json")
    assert code == cli.EXIT_OK, err
    assert not any(path.exists() for path in stale)
    assert all_files(out_dir) == {"a.txt", "a.json", ".b.txt.k3j_x9q2.tmp", ".a.txt.mine.tmp"}


def test_an_unknown_model_or_a_folder_that_is_no_model_is_a_bad_option(tmp_path, capsys):
    clip = _wav(tmp_path / "tone.wav", _tone(0.5))
    code, out, err = run_cli(capsys, "transcribe", clip, "--model", "nope")
    assert code == cli.EXIT_USAGE and out == ""
    assert asr_lines(err) == [
        "asr: error: unknown model 'nope': not a bundled name (tiny.en, base), a directory, or a Hugging "
        "Face id (owner/name)"
    ]
    (tmp_path / "empty-folder").mkdir()
    (tmp_path / "no-weights").mkdir()
    (tmp_path / "no-weights" / "config.json").write_text("{}")
    for folder in (tmp_path / "empty-folder", tmp_path / "no-weights"):
        code, out, err = run_cli(capsys, "transcribe", clip, "--model", folder)
        assert code == cli.EXIT_USAGE and out == ""
        lines = asr_lines(err)
        assert len(lines) == 1 and lines[0].startswith(f"asr: error: model '{folder}': "), err
        assert "does not appear to have" not in err and "Traceback" not in err
