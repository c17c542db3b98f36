"""The client side of `asr serve`: find a running server, hand it a command, relay what it prints.

Standard library only: `asr transcribe` with a server running must not pay for `import torch` (1-1.3 s on
2 cores, more than a short file's whole transcription on a warm server).

The protocol, JSON lines over a Unix stream socket (asr/serve.py is the other side):
- the client sends one request: {"op": "transcribe" | "ping" | "stop", "version": ..., "env": ...} plus,
  for transcribe, the command line ("argv"), its working directory ("cwd"), umask and terminal flags;
- the server answers {"ok": true} or {"error": "version" | "env", ...}; then, for transcribe, any number
  of {"out": text} and {"err": text} (stdout and stderr, in order) and last {"exit": status}.
The server runs the same code as an in-process run on the same arguments (asr.cli.main), in the client's
working directory: what is printed and written, and the exit status, are those of an in-process run.

The socket lives in a folder of the user's runtime directory that only the user can enter (mode 0700),
and is itself mode 0600; never a TCP port.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import stat
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger("asr")

RUNTIME_DIR_ENV = "ASR_RUNTIME_DIR"  # where the socket lives (default: $XDG_RUNTIME_DIR/asr-speculative)
SOCKET_NAME = "asr.sock"
HANDSHAKE_TIMEOUT_S = 10.0  # a server that takes a connection answers at once, busy or not
# What a run reads from the environment: a server started with other values would not run as this process
# would, so the client then runs in-process.
_ENV_PREFIXES = ("ASR_", "HF_", "TRANSFORMERS_", "OMP_", "MKL_", "XDG_CACHE_HOME", "CC")
_ENV_IGNORED = (RUNTIME_DIR_ENV, "ASR_SPEECH_DIR")


class ServerGone(Exception):
    """The server closed the connection before the exit status (killed, or stopped mid-request)."""


def runtime_dir() -> Path:
    """The folder holding the socket: $ASR_RUNTIME_DIR, else $XDG_RUNTIME_DIR/asr-speculative, else a
    per-user folder in the temp directory."""
    if env := os.environ.get(RUNTIME_DIR_ENV):
        return Path(env)
    if xdg := os.environ.get("XDG_RUNTIME_DIR"):
        return Path(xdg) / "asr-speculative"
    return Path(tempfile.gettempdir()) / f"asr-speculative-{os.getuid()}"


def socket_path() -> Path:
    return runtime_dir() / SOCKET_NAME


def private_dir_problem(folder: Path) -> str | None:
    """Why `folder` is not fit to hold the socket (not ours, or open to others), or None if it is."""
    try:
        info = folder.lstat()
    except FileNotFoundError:
        return f"{folder} does not exist"
    if not stat.S_ISDIR(info.st_mode):
        return f"{folder} is not a folder"
    if info.st_uid != os.getuid():
        return f"{folder} belongs to another user"
    if info.st_mode & 0o077:
        return f"{folder} is open to other users (mode {stat.S_IMODE(info.st_mode):o}, expected 700)"
    return None


def code_version() -> str:
    """This code and interpreter: a server must run exactly what this process would run in-process."""
    digest = hashlib.sha256(f"{sys.version}\0{sys.prefix}\0".encode())
    package = Path(__file__).parent
    for path in [*sorted(package.glob("*.py")), package / "draft_kernel.c"]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def run_environment() -> dict[str, str]:
    """The environment variables that can change what a run does."""
    return {
        key: value
        for key, value in os.environ.items()
        if key.startswith(_ENV_PREFIXES) and key not in _ENV_IGNORED
    }


def send(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.sendall(json.dumps(message).encode() + b"\n")


def receive(sock: socket.socket) -> Iterator[dict[str, Any]]:
    """The messages on `sock` until it closes."""
    with sock.makefile("rb") as stream:
        for line in stream:
            yield json.loads(line)


def connect() -> socket.socket | None:
    """A connection to the running server, or None if there is none (no socket, a stale one, or a folder
    that is not private)."""
    if not hasattr(socket, "AF_UNIX"):
        return None
    folder = runtime_dir()
    if (problem := private_dir_problem(folder)) is not None:
        if folder.exists():
            logger.info("not using a server: %s", problem)
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(HANDSHAKE_TIMEOUT_S)
        sock.connect(str(folder / SOCKET_NAME))
    except OSError:  # no socket, or a stale one (its server is gone): run in-process
        sock.close()
        return None
    return sock


def request(op: str, **fields: Any) -> dict[str, Any]:
    """A request's common fields."""
    return {"op": op, "version": code_version(), "env": run_environment(), **fields}


def transcribe_via_server(argv: Sequence[str]) -> int | None:
    """Run `asr transcribe` (argv: the whole command line after `asr`) on the running server, relaying its
    output; its exit status, or None if there is no usable server (the caller then runs in-process)."""
    sock = connect()
    if sock is None:
        return None
    wrote_stdout = False
    try:
        send(
            sock,
            request(
                "transcribe",
                argv=list(argv),
                cwd=os.getcwd(),
                umask=_umask(),
                stdout_isatty=sys.stdout.isatty(),
                stderr_isatty=sys.stderr.isatty(),
            ),
        )
        messages = receive(sock)
        answer = next(messages, None)
        if answer is None:
            raise ServerGone
        if not answer.get("ok"):
            if answer.get("error") == "version":
                _err(
                    "a server of another version of asr is running (asr serve --stop ends it); "
                    "transcribing in-process"
                )
            else:
                logger.info("not using the server: %s", answer.get("detail", answer))
            return None
        sock.settimeout(None)  # a long recording takes as long as it takes
        for message in messages:
            if "out" in message:
                sys.stdout.write(message["out"])
                sys.stdout.flush()
                wrote_stdout = True
            elif "err" in message:
                sys.stderr.write(message["err"])
                sys.stderr.flush()
            elif "exit" in message:
                return int(message["exit"])
        raise ServerGone
    except (ServerGone, ConnectionError, TimeoutError, ValueError):
        # ValueError: a half message (the server died writing it)
        if wrote_stdout:
            _err(
                "error: the asr server stopped during the run; finished outputs are kept: run the same "
                "command again to resume"
            )
            return 1
        _err("the asr server stopped before answering; transcribing in-process")
        return None
    finally:
        sock.close()


def ping() -> dict[str, Any] | None:
    """The running server's answer to a ping (its pid, version, whether it is ours), or None."""
    sock = connect()
    if sock is None:
        return None
    try:
        send(sock, request("ping"))
        return next(receive(sock), None)
    except (OSError, ValueError):
        return None
    finally:
        sock.close()


def stop_server() -> dict[str, Any] | None:
    """Ask the running server to stop (it finishes the runs in progress first); its last answer, or None
    if no server was running."""
    sock = connect()
    if sock is None:
        return None
    try:
        sock.settimeout(None)  # the runs in progress finish first
        send(sock, request("stop"))
        answers = list(receive(sock))
        return answers[-1] if answers else {"stopped": True}
    except (OSError, ValueError):
        return {"stopped": True}
    finally:
        sock.close()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _err(message: str) -> None:
    print(f"asr: {message}", file=sys.stderr, flush=True)
