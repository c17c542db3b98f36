"""The running app's memory stays flat under load (issue #24).

`app.memory.releasing_memory` directly, then a short soak of `python -m app` (`python -m benchmarks.soak`,
shorter): 20 requests of warm-up, then 100 from 4 clients, real English clips of up to 4 s, one request in
seven an upload that is not audio. "Also run the target alone" is unticked: it doubles the time per request,
and the leak shows without it (below). Every transcript must equal the library's for that clip (same model,
same options), every bad upload must be refused in one line, and the server's RSS may grow by at most
GROWTH_BOUND between the medians of the first and the last tenth of the 100 requests.

Why 5%: with the fix left out (ui.py calling the handler without `releasing_memory`), this test failed with
+28.9% (RSS after 20, 40, ... 120 requests: 1207, 1337, 1529, 1553, 1561, 1562 MB; 2 busy cores, AMD EPYC);
with it, the benchmark's 60-request soak of the same clips moved by -3% (987 -> 935 MB). Single samples are
noisy by a few percent (each is taken while the next request may be anywhere in its run), hence the medians.
5% is also what the issue asks over 400 requests. It takes 6-7 min on 2 cores shared with other jobs, about
4.5 min of CPU.
"""

from __future__ import annotations

import functools
import inspect
import os
import platform

import pytest

pytest.importorskip("gradio", reason="the app's dependencies are not installed: pip install -e '.[app]'")

from app import handlers, memory
from benchmarks.soak import soak

GROWTH_BOUND = 0.05


def test_memory_is_released_after_every_answer_and_error(monkeypatch):
    calls = []
    monkeypatch.setattr(memory, "release_free_memory", lambda: calls.append("release") or True)

    def handler(audio: str, compare: bool = True) -> str:
        calls.append("handler")
        if audio == "bad":
            raise ValueError("refused")
        return audio

    wrapped = memory.releasing_memory(handler)
    assert wrapped("clip") == "clip"
    with pytest.raises(ValueError, match="refused"):
        wrapped("bad")
    assert calls == ["handler", "release", "handler", "release"]


def test_the_wrapped_handler_keeps_its_signature_for_gradio():
    # Gradio names the API's parameters and finds the progress argument from the signature.
    partial = functools.partial(handlers.transcribe_audio, settings=handlers.AppSettings())
    assert inspect.signature(memory.releasing_memory(partial)) == inspect.signature(partial)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_free_memory_can_be_released_on_glibc():
    assert memory.release_free_memory()


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the server's RSS from /proc")
def test_server_memory_stays_flat_under_load(speech_dir):
    report = soak(
        n_requests=100,
        n_warmup=20,
        n_clients=4,
        bad_every=7,
        compare=False,
        manifest=speech_dir / "manifest.jsonl",
        max_clip_s=4.0,
    )
    failures = report.failures()
    assert not failures, [(o.kind, o.name, o.detail) for o in failures]
    assert len(report.outcomes) == 120
    assert sum(o.kind == "bad" for o in report.outcomes) == 120 // 7
    growth = report.settled_growth()
    assert growth < GROWTH_BOUND, (
        f"server RSS grew {growth:.1%} over 100 requests (bound {GROWTH_BOUND:.0%}): {report.curve(every=20)}"
    )
