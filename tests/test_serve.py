"""`asr serve` and `asr transcribe` through it (issue #22): the same output as in-process, a private socket,
a killed server, an interrupted client, a server of another version, concurrent clients.

Every run here is a real process (a server, clients, in-process runs), on tiny.en and real speech; each
server has a runtime folder of its own (ASR_RUNTIME_DIR).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL = "tiny.en"
CLIPS = ("audio/jfk/jfk.wav", "audio/librispeech/1089-134691-0000.flac")
# A client that reports, in a file, whether it imported torch: it must not when a server answers.
CLIENT = (
    "import sys; from asr import cli; code = cli.main(sys.argv[2:]); "
    "open(sys.argv[1], 'w').write(str('torch' in sys.modules)); sys.exit(code)"
)

pytestmark = pytest.mark.slow


def env_for(runtime: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["ASR_RUNTIME_DIR"] = str(runtime)
    return env


def start_server(runtime: Path, *extra: str, code: str | None = None) -> subprocess.Popen[str]:
    """A foreground `asr serve`, returned once it answers (`code`: run this instead of the CLI)."""
    argv = ["-c", code] if code else ["-m", "asr.cli"]
    process = subprocess.Popen(
        [sys.executable, *argv, "serve", "--model", MODEL, *extra],
        env=env_for(runtime),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not answers(runtime / "asr.sock"):  # a stale socket may be there before: it refuses
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.1)
    return process


def answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
        except OSError:
            return False
        return True


def stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The runtime folder of a server shared by this module's tests (concurrency 2)."""
    folder = tmp_path_factory.mktemp("runtime") / "asr"
    server = start_server(folder, "--concurrency", "2")
    yield folder
    stop(server)


def run(
    runtime: Path, cwd: Path, *argv: str | Path, mark: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`asr <argv>` as a process; with `mark`, the client that records whether it imported torch."""
    prefix = ["-c", CLIENT, str(mark)] if mark else ["-m", "asr.cli"]
    return subprocess.run(
        [sys.executable, *prefix, *map(str, argv)],
        cwd=cwd,
        env=env_for(runtime),
        capture_output=True,
        text=True,
        timeout=600,
    )


def comparable(stderr: str) -> list[str]:
    """stderr's report lines with the measured times left out (they differ from run to run)."""
    lines = [line[line.index("asr: ") :] for line in re.split(r"[\r\n]+", stderr) if "asr: " in line]
    return [re.sub(r"\d+\.\d+|\d+ tokens/s", "#", line) for line in lines]


def outputs(folder: Path) -> dict[str, object]:
    """Every output file's content; a JSON file's without the measured figures (times, speeds)."""
    found: dict[str, object] = {}
    for path in sorted(folder.rglob("*.*")):
        if path.suffix == ".json":
            data = json.loads(path.read_text())
            stats = data.pop("stats")
            found[path.name] = (data, stats["n_tokens"], stats["proposed"], stats["accepted"])
        else:
            found[path.name] = path.read_text()
    return found


def inputs(speech_dir: Path, folder: Path) -> Path:
    """A folder of good clips and bad files (empty, not audio)."""
    folder.mkdir()
    for clip in CLIPS:
        (folder / Path(clip).name).write_bytes((speech_dir / clip).read_bytes())
    (folder / "empty.wav").write_bytes(b"")
    (folder / "noise.flac").write_bytes(os.urandom(5000))
    return folder


def test_outputs_through_the_server_are_those_of_an_in_process_run(runtime, speech_dir, tmp_path):
    clips = inputs(speech_dir, tmp_path / "in")
    cases = [  # relative paths: the server works in the client's folder and prints names as given
        ("transcribe", "in/jfk.wav", "--model", MODEL),
        ("transcribe", "in", "--model", MODEL, "--output-dir", "{out}"),
        ("transcribe", "in/jfk.wav", "--model", MODEL, "--language", "xx"),
        ("transcribe", "in/missing.wav", "--model", MODEL),
        ("transcribe", "in/noise.flac", "--model", MODEL),
    ]
    for i, case in enumerate(cases):
        mark = tmp_path / f"mark{i}"
        served = run(runtime, tmp_path, *(a.format(out=f"served{i}") for a in case), mark=mark)
        alone = run(runtime, tmp_path, *(a.format(out=f"alone{i}") for a in case), "--server", "off")
        assert mark.read_text() == "False", f"{case}: the client imported torch (no server used?)"
        assert "Traceback" not in served.stderr
        assert (served.returncode, served.stdout) == (alone.returncode, alone.stdout), case
        assert comparable(served.stderr) == comparable(alone.stderr), case
        if "--output-dir" in case:
            assert outputs(tmp_path / f"served{i}") == outputs(tmp_path / f"alone{i}")
            assert len(outputs(tmp_path / f"served{i}")) == 2 * 5  # two clips, five formats each
    assert served.returncode == 1 and clips.is_dir()


def test_the_socket_is_private_to_its_user(runtime):
    assert stat.S_IMODE((runtime / "asr.sock").stat().st_mode) == 0o600
    assert stat.S_ISSOCK((runtime / "asr.sock").stat().st_mode)
    assert stat.S_IMODE(runtime.stat().st_mode) == 0o700


def test_concurrent_clients_each_get_their_own_transcript(runtime, speech_dir, tmp_path):
    clips = inputs(speech_dir, tmp_path / "in")
    names = ["jfk.wav", "1089-134691-0000.flac", "jfk.wav", "1089-134691-0000.flac"]
    alone = {
        name: run(runtime, tmp_path, "transcribe", clips / name, "--model", MODEL, "--server", "off")
        for name in set(names)
    }

    def client(i: int) -> tuple[str, subprocess.CompletedProcess[str], str]:
        mark = tmp_path / f"mark{i}"
        done = run(runtime, tmp_path, "transcribe", clips / names[i], "--model", MODEL, mark=mark)
        return names[i], done, mark.read_text()

    with ThreadPoolExecutor(len(names)) as pool:
        results = list(pool.map(client, range(len(names))))
    for name, done, imported_torch in results:
        assert imported_torch == "False"
        assert (done.returncode, done.stdout) == (0, alone[name].stdout)


def long_clip(speech_dir: Path, path: Path) -> Path:
    """A 110-s recording (JFK ten times): long enough to be in progress when the test acts."""
    samples, rate = sf.read(speech_dir / CLIPS[0], dtype="float32")
    sf.write(path, np.tile(samples, 10), rate)
    return path


def test_a_killed_server_leaves_the_client_to_finish_in_process(speech_dir, tmp_path):
    folder = tmp_path / "runtime"
    server = start_server(folder)
    clip = long_clip(speech_dir, tmp_path / "long.wav")
    try:
        client = subprocess.Popen(
            [sys.executable, "-m", "asr.cli", "transcribe", clip, "--model", MODEL],
            env=env_for(folder),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.5)  # the request is in progress: reading the audio, or decoding
        server.kill()
        out, err = client.communicate(timeout=600)
    finally:
        stop(server)
    alone = run(folder, tmp_path, "transcribe", clip, "--model", MODEL, "--server", "off")
    assert client.returncode == 0, err
    assert out == alone.stdout
    assert "asr: the asr server stopped before answering; transcribing in-process" in err
    # its socket is left behind, stale: a client runs in-process without a word, a new server replaces it
    assert (folder / "asr.sock").exists()
    again = run(folder, tmp_path, "transcribe", speech_dir / CLIPS[1], "--model", MODEL)
    assert again.returncode == 0 and "server" not in again.stderr
    replacement = start_server(folder)
    try:
        assert run(folder, tmp_path, "serve", "--stop").returncode == 0
        assert replacement.wait(timeout=60) == 0
    finally:
        stop(replacement)
    assert not (folder / "asr.sock").exists()
    assert "no server is running" in run(folder, tmp_path, "serve", "--stop").stderr


def test_an_interrupted_client_stops_its_run_not_the_server(speech_dir, tmp_path):
    folder = tmp_path / "runtime"
    server = start_server(folder)
    clip = long_clip(speech_dir, tmp_path / "long.wav")
    try:
        client = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "asr.cli",
                "transcribe",
                clip,
                "--model",
                MODEL,
                "--output-dir",
                tmp_path / "o",
            ],
            env=env_for(folder),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.5)
        client.send_signal(signal.SIGINT)
        _, err = client.communicate(timeout=60)
        assert client.returncode == 130
        assert "Traceback" not in err and "asr: interrupted" in err
        # the server goes on serving
        done = run(
            folder, tmp_path, "transcribe", speech_dir / CLIPS[1], "--model", MODEL, mark=tmp_path / "m"
        )
        assert done.returncode == 0 and (tmp_path / "m").read_text() == "False"
    finally:
        stop(server)
    assert not list((tmp_path / "o").glob("*.tmp")), "no temp file of the interrupted run may remain"


def test_a_server_of_another_version_is_not_used(speech_dir, tmp_path):
    folder = tmp_path / "runtime"
    other = (
        "import sys; import asr.client as c; c.code_version = lambda: 'other'; from asr import cli; "
        "sys.exit(cli.main(sys.argv[1:]))"
    )
    server = start_server(folder, code=other)
    try:
        done = run(folder, tmp_path, "transcribe", speech_dir / CLIPS[1], "--model", MODEL)
        alone = run(
            folder, tmp_path, "transcribe", speech_dir / CLIPS[1], "--model", MODEL, "--server", "off"
        )
        assert (done.returncode, done.stdout) == (0, alone.stdout)
        assert "a server of another version of asr is running (asr serve --stop ends it)" in done.stderr
        assert run(folder, tmp_path, "serve", "--stop").returncode == 0  # any version can stop it
        assert server.wait(timeout=60) == 0
    finally:
        stop(server)


def test_an_idle_server_stops_by_itself(tmp_path):
    folder = tmp_path / "runtime"
    server = start_server(folder, "--idle-timeout", "1")
    try:
        assert server.wait(timeout=60) == 0
    finally:
        stop(server)
    assert not (folder / "asr.sock").exists()


def test_a_second_server_is_refused_with_one_line(runtime, tmp_path):
    done = run(runtime, tmp_path, "serve", "--model", MODEL)
    assert done.returncode == 1
    assert comparable(done.stderr) == [
        f"asr: error: a server is already running or starting ({runtime}/asr.sock)"
    ]
