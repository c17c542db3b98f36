"""`asr serve`: a warm local server that holds loaded models and runs `asr transcribe` for clients.

A cold `asr transcribe` spends most of a short file's time starting: importing torch, mapping and packing
the weights, building the draft (issue #22). The server pays that once. Each request is the command line
of an `asr transcribe`, run by the same function an in-process run uses (asr.cli.main) in the client's
working directory and umask, with its stdout and stderr sent back to the client: the same transcript,
files, report lines and exit status. The protocol and the socket's place: asr/client.py.

- Unix socket only (mode 0600, in a folder of mode 0700 in the user's runtime directory), never TCP.
- `--concurrency N` requests run at a time (default 1); later ones wait their turn.
- An idle timeout stops the server when no request came for that long; `asr serve --stop` stops it
  cleanly (the requests in progress finish first); a client that goes away (Ctrl-C) interrupts its
  request as Ctrl-C interrupts an in-process run.
- One lock file per runtime directory: one server at a time; a socket left by a killed server is removed.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import io
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from . import client
from .errors import AsrError

logger = logging.getLogger("asr")

DEFAULT_IDLE_TIMEOUT_S = 900.0
LOCK_NAME = "asr.lock"
LOG_NAME = "server.log"
_CLONE_FS = 0x200  # unshare(2): this thread gets its own working directory and umask

_local = threading.local()


class ServerError(AsrError):
    """The server cannot start (another one runs, or the runtime directory is unfit)."""


class _ThreadStream(io.TextIOBase):
    """sys.stdout / sys.stderr of the server: a request's thread writes to its client, any other thread to
    the server's own stream. So the CLI's prints, tqdm and logging go where an in-process run's would."""

    def __init__(self, name: str, fallback: TextIO) -> None:
        self.name, self.fallback = name, fallback

    def _target(self) -> TextIO:
        return getattr(_local, self.name, None) or self.fallback

    def write(self, text: str) -> int:
        return self._target().write(text)

    def flush(self) -> None:
        self._target().flush()

    def isatty(self) -> bool:
        return self._target().isatty()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"


class _ClientStream(io.TextIOBase):
    """One of a client's streams: each write is a message on its connection."""

    def __init__(self, connection: _Connection, key: str, isatty: bool) -> None:
        self.connection, self.key, self._isatty = connection, key, isatty

    def write(self, text: str) -> int:
        if text:
            self.connection.send({self.key: text})
        return len(text)

    def isatty(self) -> bool:
        return self._isatty

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"


class _Connection:
    """A client's socket; writes after the client went away are dropped (its request is being stopped)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()
        self.gone = False

    def send(self, message: dict[str, Any]) -> None:
        with self.lock:
            if self.gone:
                return
            try:
                client.send(self.sock, message)
            except OSError:
                self.gone = True


class Server:
    def __init__(self, folder: Path, concurrency: int, idle_timeout_s: float) -> None:
        self.folder = folder
        self.path = folder / client.SOCKET_NAME
        self.version = client.code_version()
        self.env = client.run_environment()
        self.slots = threading.Semaphore(concurrency)
        self.idle_timeout_s = idle_timeout_s
        self.lock = threading.Lock()
        self.n_active = 0
        self.last_active = time.monotonic()
        self.stopping = threading.Event()
        self.idle = threading.Condition(self.lock)
        self.listener: socket.socket | None = None
        self.own_cwd = _unshare_fs()  # per-thread working directories (Linux); else one request at a time
        if not self.own_cwd:
            self.slots = threading.Semaphore(1)

    def bind(self) -> None:
        """Listen on the socket, mode 0600 from its creation (umask), replacing a stale one."""
        if self.path.exists() or self.path.is_symlink():
            self.path.unlink()  # we hold the lock: whoever made it is gone
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            listener.bind(str(self.path))
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        listener.listen(64)
        listener.settimeout(0.5)
        self.listener = listener

    def serve_forever(self) -> None:
        assert self.listener is not None
        try:
            while not self.stopping.is_set():
                try:
                    sock, _ = self.listener.accept()
                except TimeoutError:
                    with self.lock:
                        idle_for = time.monotonic() - self.last_active
                        if self.n_active == 0 and self.idle_timeout_s and idle_for > self.idle_timeout_s:
                            logger.warning("idle for %.0f s: stopping", idle_for)
                            break
                    continue
                except OSError:
                    if self.stopping.is_set():
                        break
                    raise
                threading.Thread(target=self.handle, args=(sock,), daemon=True).start()
        finally:
            self.close()
            with self.lock:
                while self.n_active:
                    self.idle.wait()

    def close(self) -> None:
        """Stop taking requests: the socket goes at once, so a new client runs in-process."""
        self.stopping.set()
        with contextlib.suppress(OSError):
            if self.listener is not None:
                self.listener.close()
        with contextlib.suppress(OSError):
            self.path.unlink()

    def handle(self, sock: socket.socket) -> None:
        connection = _Connection(sock)
        try:
            sock.settimeout(client.HANDSHAKE_TIMEOUT_S)
            line = sock.makefile("rb").readline()
            request = json.loads(line) if line else {}
            sock.settimeout(None)
            # any version may ping or stop a server: `asr serve --stop` must end an old one
            if request.get("op") == "ping":
                same = request.get("version") == self.version
                connection.send(
                    {"ok": True, "pid": os.getpid(), "socket": str(self.path), "same_version": same}
                )
            elif request.get("op") == "stop":
                self.close()
                with self.lock:
                    while self.n_active:
                        self.idle.wait()
                connection.send({"ok": True, "stopped": True, "pid": os.getpid()})
            elif request.get("version") != self.version:
                connection.send({"error": "version", "detail": f"server version {self.version}"})
            elif request.get("env") != self.env:
                connection.send({"error": "env", "detail": "the server runs with other ASR_/HF_ settings"})
            elif request.get("op") == "transcribe":
                connection.send({"ok": True})
                self.transcribe(connection, request)
            else:
                connection.send({"error": "request", "detail": f"unknown request {request.get('op')!r}"})
        except (OSError, ValueError) as exc:
            logger.warning("a request failed: %s", exc)
        finally:
            with contextlib.suppress(OSError):
                sock.close()

    def transcribe(self, connection: _Connection, request: dict[str, Any]) -> None:
        with self.slots, self._active():
            watcher = _DisconnectWatcher(connection, threading.get_ident())
            code = 1
            try:
                with self._in_clients_place(connection, request):
                    watcher.start()
                    try:
                        code = _run_cli(request["argv"])
                    finally:
                        watcher.finish()
            except KeyboardInterrupt:  # the client went away between two steps of ours
                code = 130
            connection.send({"exit": code})

    @contextlib.contextmanager
    def _active(self) -> Iterator[None]:
        with self.lock:
            self.n_active += 1
        try:
            yield
        finally:
            with self.lock:
                self.n_active -= 1
                self.last_active = time.monotonic()
                self.idle.notify_all()

    @contextlib.contextmanager
    def _in_clients_place(self, connection: _Connection, request: dict[str, Any]) -> Iterator[None]:
        """The client's working directory, umask and streams, for this thread (or, without unshare(2),
        for the process: one request at a time then)."""
        if self.own_cwd:
            _unshare_fs()
        os.chdir(request["cwd"])
        os.umask(int(request["umask"]))
        _local.stdout = _ClientStream(connection, "out", bool(request.get("stdout_isatty")))
        _local.stderr = _ClientStream(connection, "err", bool(request.get("stderr_isatty")))
        try:
            yield
        finally:
            _local.stdout = _local.stderr = None
            os.chdir("/")


class _DisconnectWatcher:
    """Interrupts a request (KeyboardInterrupt in its thread, as Ctrl-C in an in-process run) when its
    client closes the connection: the client sends nothing after its request, so a read returns only then."""

    def __init__(self, connection: _Connection, thread_id: int) -> None:
        self.connection, self.thread_id = connection, thread_id
        self.lock = threading.Lock()
        self.done = False

    def start(self) -> None:
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        with contextlib.suppress(OSError):
            while self.connection.sock.recv(4096):
                pass
        with self.lock:
            if self.done:
                return
            self.connection.gone = True
            logger.warning("a client went away: interrupting its run")
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(self.thread_id), ctypes.py_object(KeyboardInterrupt)
            )

    def finish(self) -> None:
        with self.lock:
            self.done = True


def _run_cli(argv: Sequence[str]) -> int:
    from .cli import main

    return main(argv, in_process=True)


def _unshare_fs() -> bool:
    """Give the calling thread its own working directory and umask (Linux unshare(CLONE_FS))."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.unshare(_CLONE_FS) == 0)
    except (OSError, AttributeError):
        return False


@contextlib.contextmanager
def _server_lock(folder: Path) -> Iterator[None]:
    """Held for the server's life: one server per runtime directory."""
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ServerError(
                f"a server is already running or starting ({folder / client.SOCKET_NAME})"
            ) from None
        yield
    finally:
        os.close(fd)


def prepare_runtime_dir() -> Path:
    """The runtime directory, created private (0700) if absent; refused if someone else could enter it."""
    folder = client.runtime_dir()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if (problem := client.private_dir_problem(folder)) is not None:
        raise ServerError(f"cannot serve: {problem}")
    return folder


def warm(models: Sequence[str], device: str) -> None:
    """Load `models` and build their default drafts, so that the first request finds them ready."""
    import numpy as np

    from .decoding import DecodingOptions
    from .models import load_model
    from .transcribe import Transcriber

    for name in models:
        transcriber = Transcriber(load_model(name, device=device), DecodingOptions())
        # a first run sets up the CPU kernels' code for these shapes (the encoder's first pass is slower)
        transcriber.transcribe(np.zeros(16000, dtype=np.float32))


def run(models: Sequence[str], device: str, concurrency: int, idle_timeout_s: float) -> int:
    """`asr serve` in the foreground: warm up, serve until stopped or idle. Its log goes to stderr."""
    if not hasattr(socket, "AF_UNIX"):
        raise ServerError("asr serve needs Unix sockets, which this system lacks")
    folder = prepare_runtime_dir()
    with _server_lock(folder):
        started = time.perf_counter()
        warm(models, device)
        server = Server(folder, concurrency, idle_timeout_s)
        real_stdout, real_stderr = sys.stdout, sys.stderr
        sys.stdout = _ThreadStream("stdout", real_stdout)  # type: ignore[assignment]
        sys.stderr = _ThreadStream("stderr", real_stderr)  # type: ignore[assignment]
        try:
            server.bind()
            print(
                f"asr: serving on {server.path} (pid {os.getpid()}, {', '.join(models)} loaded in "
                f"{time.perf_counter() - started:.1f} s; concurrency {concurrency}; idle timeout "
                f"{f'{idle_timeout_s:.0f} s' if idle_timeout_s else 'none'})",
                file=real_stderr,
                flush=True,
            )
            server.serve_forever()
        finally:
            sys.stdout, sys.stderr = real_stdout, real_stderr
            server.close()
    print("asr: server stopped", file=sys.stderr, flush=True)
    return 0


def start_background(argv: Sequence[str], wait_s: float = 300.0) -> int:
    """`asr serve --background`: start the server as its own process (log: LOG_NAME in the runtime
    directory) and return once it answers."""
    import subprocess

    if (answer := client.ping()) is not None and answer.get("ok"):
        print(f"asr: a server is already running (pid {answer.get('pid')})", file=sys.stderr)
        return 0
    folder = prepare_runtime_dir()
    log = folder / LOG_NAME
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "asr.cli", "serve", *argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,  # a Ctrl-C in this terminal does not reach it
        )
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            last = log.read_text(errors="replace").strip().splitlines()
            reason = last[-1] if last else f"exit status {process.returncode}"
            print(f"asr: error: the server did not start: {reason.removeprefix('asr: ')}", file=sys.stderr)
            return 1
        if (answer := client.ping()) is not None and answer.get("ok"):
            print(
                f"asr: server ready (pid {process.pid}, socket {answer.get('socket')}, log {log})",
                file=sys.stderr,
            )
            return 0
        time.sleep(0.1)
    print(f"asr: error: the server did not answer within {wait_s:.0f} s (log {log})", file=sys.stderr)
    return 1


def stop() -> int:
    """`asr serve --stop`."""
    answer = client.stop_server()
    if answer is None:
        print("asr: no server is running", file=sys.stderr)
    else:
        print(f"asr: server stopped (pid {answer.get('pid', '?')})", file=sys.stderr)
    return 0
