"""Soak the running web app: many requests from several clients, and the server's memory over the run (#24).

    python -m benchmarks.soak [--requests 400] [--warmup 20] [--clients 4] [--bad-every 7]
                              [--no-compare] [--max-clip-s 12] [--out DIR]

Starts `python -m app` (its defaults) on a free loopback port in a process of its own, then `clients` threads,
each with its own gradio_client, send `warmup + requests` requests to `/transcribe`: real English clips of the
manifest (default: ../shared/speech/public/manifest.jsonl, clips up to --max-clip-s seconds) with the page's
default options, and every `bad-every`-th request an upload that is not audio (text, random bytes, JSON, an
image header), which must be refused with one line naming the file. Every transcript must equal what the
library gives for that clip in this process (same model, same options, before the server starts).

The server's resident memory (VmRSS of /proc/PID/status) is sampled after every finished request and every
half second; the growth is measured from the end of the warm-up to the end of the run. Prints outcomes,
latency p50/p95 and the RSS curve (every `--curve-every` requests); --out also writes soak.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MANIFEST = ROOT.parent / "shared" / "speech" / "public" / "manifest.jsonl"
STARTUP_TIMEOUT_S = 180.0
REQUEST_TIMEOUT_S = 600.0


@dataclass
class Outcome:
    """One finished request, in the order requests finished."""

    index: int  # the order it was sent in (warm-up first)
    kind: str  # "clip" or "bad"
    name: str  # the clip's path in the manifest, or the bad upload's file name
    ok: bool  # a clip: the transcript equals the library's; a bad upload: refused with the expected message
    latency_s: float
    rss_mb: float  # the server's RSS right after this request finished
    detail: str = ""  # what went wrong, when not ok


@dataclass
class SoakReport:
    n_warmup: int
    n_requests: int
    n_clients: int
    compare: bool
    outcomes: list[Outcome] = field(default_factory=list)
    rss_samples: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, MB)
    rss_start_mb: float = 0.0  # after the server started, before any request
    machine: dict[str, Any] = field(default_factory=dict)

    @property
    def measured(self) -> list[Outcome]:
        """The requests after the warm-up, in the order they finished."""
        return self.outcomes[self.n_warmup :]

    @property
    def rss_after_warmup_mb(self) -> float:
        return self.outcomes[self.n_warmup - 1].rss_mb if self.n_warmup else self.rss_start_mb

    @property
    def rss_end_mb(self) -> float:
        return self.outcomes[-1].rss_mb

    @property
    def growth(self) -> float:
        """RSS growth over the measured requests, as a fraction of the RSS after the warm-up."""
        return self.rss_end_mb / self.rss_after_warmup_mb - 1

    def settled_growth(self, part: float = 0.1) -> float:
        """RSS growth from the first to the last `part` of the measured requests, each the median of the RSS
        after its requests: steadier than two single samples, each taken while the next request may be
        anywhere in its run (tens of MB apart)."""
        n = max(1, int(len(self.measured) * part))
        first = statistics.median(o.rss_mb for o in self.measured[:n])
        last = statistics.median(o.rss_mb for o in self.measured[-n:])
        return last / first - 1

    def slope_mb_per_request(self, part: float = 0.5) -> float:
        """Least-squares slope of RSS against requests over the last `part` of the measured requests."""
        points = self.measured[int(len(self.measured) * (1 - part)) :]
        if len(points) < 2:
            return 0.0
        xs = list(range(len(points)))
        ys = [o.rss_mb for o in points]
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        den = sum((x - mx) ** 2 for x in xs)
        return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den

    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]

    def curve(self, every: int) -> list[tuple[int, float]]:
        """(requests finished, RSS MB): at the start, after the warm-up, then every `every` requests."""
        points = [(0, self.rss_start_mb)]
        for i, outcome in enumerate(self.outcomes, start=1):
            n_after = i - self.n_warmup
            if n_after == 0 or (n_after > 0 and n_after % every == 0) or i == len(self.outcomes):
                points.append((i, outcome.rss_mb))
        return points

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data |= {
            "rss_after_warmup_mb": self.rss_after_warmup_mb,
            "rss_end_mb": self.rss_end_mb,
            "growth": self.growth,
            "settled_growth": self.settled_growth(),
            "slope_mb_per_request_second_half": self.slope_mb_per_request(),
        }
        return data


def normalize(text: str) -> str:
    return " ".join(text.split())


def rss_mb(pid: int) -> float:
    """The process's resident set size in MB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def english_clips(manifest: Path, max_clip_s: float) -> list[Path]:
    entries = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    return [
        manifest.parent / e["audio"]
        for e in entries
        if e["language"] == "en" and e["duration_s"] <= max_clip_s
    ]


def reference_texts(clips: Sequence[Path]) -> dict[Path, str]:
    """What the library gives for each clip with the page's default options (the same model and options
    the app uses: `app.handlers` builds them)."""
    from app import handlers
    from asr.models import load_model
    from asr.transcribe import TranscribeOptions, transcribe

    options = handlers.decoding_options(
        "self", handlers.GREEDY, 5, handlers.AUTO_LANGUAGE, "transcribe", timestamps=True
    )
    model = load_model(handlers.DEFAULT_MODEL)
    return {clip: transcribe(model, clip, options, TranscribeOptions(compare=False)).text for clip in clips}


def bad_uploads(folder: Path) -> list[tuple[Path, str]]:
    """Uploads that are not audio, each with what the refusal must say."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(24)
    files = {
        "notes.wav": b"not audio\n" * 50,
        "noise.flac": bytes(rng.getrandbits(8) for _ in range(4000)),
        "data.mp3": json.dumps({"text": "not audio", "n": list(range(200))}).encode(),
        "picture.ogg": b"\x89PNG\r\n\x1a\n" + bytes(rng.getrandbits(8) for _ in range(2000)),
    }
    out = []
    for name, content in files.items():
        path = folder / name
        path.write_bytes(content)
        out.append((path, f"{name}: "))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(port: int, app_args: Sequence[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`python -m app` on `port`, once it answers; its output goes to the parent's stderr."""
    import httpx

    server = subprocess.Popen(
        [sys.executable, "-m", "app", "--port", str(port), *app_args],
        env=os.environ | {"GRADIO_ANALYTICS_ENABLED": "False"} | env,
        stdout=sys.stderr,
    )
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the app exited with code {server.returncode} before serving")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.kill()
    raise RuntimeError(f"the app did not answer on port {port} within {STARTUP_TIMEOUT_S:.0f} s")


def soak(
    n_requests: int,
    n_warmup: int = 20,
    n_clients: int = 4,
    bad_every: int = 7,
    compare: bool = True,
    manifest: Path = DEFAULT_MANIFEST,
    max_clip_s: float = 12.0,
    work_dir: Path | None = None,
    app_args: Sequence[str] = (),
    server_env: dict[str, str] | None = None,
    progress: bool = False,
) -> SoakReport:
    """Run the soak and return its report (the server is stopped before this returns)."""
    import tempfile

    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    clips = english_clips(manifest, max_clip_s)
    if not clips:
        raise ValueError(f"no English clip of at most {max_clip_s} s in {manifest}")
    references = reference_texts(clips)
    with tempfile.TemporaryDirectory(prefix="asr-soak-") as tmp:
        bad = bad_uploads(Path(work_dir or tmp) / "bad")
        # The requests in the order they are sent: clips in turn, every bad_every-th a bad upload in turn.
        clip_cycle, bad_cycle = itertools.cycle(clips), itertools.cycle(bad)
        plan: list[tuple[str, Path, str]] = []
        for i in range(n_warmup + n_requests):
            if bad_every and i % bad_every == bad_every - 1:
                path, expected = next(bad_cycle)
                plan.append(("bad", path, expected))
            else:
                clip = next(clip_cycle)
                plan.append(("clip", clip, normalize(references[clip])))

        port = free_port()
        server = start_server(port, app_args, server_env or {})
        report = SoakReport(n_warmup, n_requests, n_clients, compare)
        report.machine = {
            "cpu": _cpu_name(),
            "n_cpus": os.cpu_count(),
            "python": platform.python_version(),
            "app_args": list(app_args),
            "server_env": server_env or {},
        }
        start = time.monotonic()
        report.rss_start_mb = rss_mb(server.pid)
        lock = threading.Lock()
        jobs = iter(enumerate(plan))
        stop = threading.Event()
        errors: list[BaseException] = []

        def sample() -> None:
            while not stop.wait(0.5):
                try:
                    report.rss_samples.append((time.monotonic() - start, rss_mb(server.pid)))
                except (OSError, RuntimeError):
                    return

        def client_loop() -> None:
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
                while True:
                    with lock:
                        job = next(jobs, None)
                    if job is None:
                        return
                    index, (kind, path, expected) = job
                    t0 = time.monotonic()
                    ok, detail = False, ""
                    try:
                        out = client.predict(handle_file(str(path)), compare=compare, api_name="/transcribe")
                        text = normalize(out[0])
                        ok = kind == "clip" and text == expected
                        detail = "" if ok else f"answered {text!r}, expected {expected!r}"
                    except AppError as exc:
                        message = str(exc)
                        ok = kind == "bad" and expected in message and "\n" not in message
                        detail = "" if ok else f"refused: {message!r}"
                    latency = time.monotonic() - t0
                    outcome = Outcome(
                        index,
                        kind,
                        str(path.relative_to(manifest.parent)) if kind == "clip" else path.name,
                        ok,
                        latency,
                        rss_mb(server.pid),
                        detail,
                    )
                    with lock:
                        report.outcomes.append(outcome)
                        done = len(report.outcomes)
                    if progress and (done % 10 == 0 or not ok):
                        print(
                            f"{done:5d} requests  rss {outcome.rss_mb:7.1f} MB  "
                            f"{'' if ok else 'FAILED ' + detail}",
                            file=sys.stderr,
                            flush=True,
                        )
            except BaseException as exc:  # reported after the run: a client dying must not hang the soak
                errors.append(exc)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        threads = [threading.Thread(target=client_loop) for _ in range(n_clients)]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join(REQUEST_TIMEOUT_S * (n_warmup + n_requests))
        finally:
            stop.set()
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        if errors:
            raise errors[0]
    return report


def _cpu_name() -> str:
    from benchmarks.machine import cpu_name

    return cpu_name()


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def print_report(report: SoakReport, curve_every: int) -> None:
    measured = report.measured
    clips = [o for o in measured if o.kind == "clip"]
    bad = [o for o in measured if o.kind == "bad"]
    m = report.machine
    print(
        f"# Soak: {report.n_requests} requests after {report.n_warmup} of warm-up, "
        f"{report.n_clients} clients, compare {'on' if report.compare else 'off'}"
    )
    print(
        f"{m['cpu']}, {m['n_cpus']} CPUs, Python {m['python']}; app args {m['app_args'] or 'none'}, "
        f"env {m['server_env'] or 'none'}"
    )
    print()
    print(f"- clips answered correctly: {sum(o.ok for o in clips)}/{len(clips)}")
    print(f"- bad uploads refused: {sum(o.ok for o in bad)}/{len(bad)}")
    if clips:
        latencies = [o.latency_s for o in clips]
        p50, p95 = percentile(latencies, 0.5), percentile(latencies, 0.95)
        print(f"- clip latency: p50 {p50:.2f} s, p95 {p95:.2f} s")
    print(
        f"- server RSS: {report.rss_start_mb:.0f} MB at start, {report.rss_after_warmup_mb:.0f} MB after the "
        f"warm-up, {report.rss_end_mb:.0f} MB at the end: {report.growth:+.1%} over the measured requests "
        f"({report.settled_growth():+.1%} between the medians of their first and last tenth); "
        f"slope over their second half {report.slope_mb_per_request():+.3f} MB/request"
    )
    print()
    print("| requests | RSS MB |")
    print("|---:|---:|")
    for n, mb in report.curve(curve_every):
        print(f"| {n} | {mb:.1f} |")
    for o in report.failures():
        print(f"FAILED #{o.index} {o.kind} {o.name}: {o.detail}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400, help="measured requests (default 400)")
    parser.add_argument("--warmup", type=int, default=20, help="requests before measuring (default 20)")
    parser.add_argument("--clients", type=int, default=4, help="client threads (default 4)")
    parser.add_argument(
        "--bad-every", type=int, default=7, help="every N-th request is not audio (default 7)"
    )
    parser.add_argument(
        "--no-compare", dest="compare", action="store_false", help="untick 'also run the target alone'"
    )
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    parser.add_argument("--max-clip-s", type=float, default=12.0, help="longest clip sent (default 12 s)")
    parser.add_argument("--curve-every", type=int, default=50, help="RSS curve step in requests")
    parser.add_argument(
        "--server-env", action="append", default=[], metavar="KEY=VALUE", help="environment of the server"
    )
    parser.add_argument("--app-arg", action="append", default=[], help="passed to `python -m app`")
    parser.add_argument("--out", type=Path, default=None, help="folder for soak.json")
    args = parser.parse_args(argv)
    env = {}
    for item in args.server_env:
        if not re.fullmatch(r"\w+=.*", item):
            parser.error(f"--server-env takes KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        env[key] = value
    report = soak(
        args.requests,
        args.warmup,
        args.clients,
        args.bad_every,
        args.compare,
        args.manifest,
        args.max_clip_s,
        app_args=args.app_arg,
        server_env=env,
        progress=True,
    )
    print_report(report, args.curve_every)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "soak.json").write_text(json.dumps(report.to_dict(), indent=2))
    return 1 if report.failures() else 0


if __name__ == "__main__":
    sys.exit(main())
