"""The web app in a real browser: Debian's headless Chromium driven by Playwright (no browser download).

Clicks Transcribe with nothing uploaded (an error appears, the page stays usable), uploads a real clip, and
finds the transcript, the figures, the token picture, the plot and the downloads on the page. Every request
the page makes to anywhere but the app is blocked and recorded: the page must work offline. A screenshot of
the finished page is saved as test-artifacts/app.png (git-ignored) for a person to look at.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

pytest.importorskip("gradio", reason="the app's dependencies are not installed: pip install -e '.[app]'")
playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (test extra)")

from app.handlers import AppSettings  # noqa: E402
from app.ui import build_demo, launch_options  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO_ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"  # Debian's package (.ci/run installs it)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]
JFK = "audio/jfk/jfk.wav"
JFK_TEXT = (
    "and so my fellow americans ask not what your country can do for you ask what you can do for your country"
)
TRANSCRIBE_TIMEOUT_MS = 240_000  # a first request loads the model; the machine may be busy


def normalize(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


@pytest.fixture(scope="module")
def app_url() -> Iterator[str]:
    settings = AppSettings()
    demo = build_demo(settings)
    demo.launch(prevent_thread_lock=True, quiet=True, server_name="127.0.0.1", **launch_options(settings))
    try:
        yield demo.local_url.rstrip("/")
    finally:
        demo.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    executable = CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium")
    if executable is None:
        pytest.skip(
            f"no Chromium at {CHROMIUM} or on PATH: install Debian's package (apt-get install chromium)"
        )
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.mark.slow
def test_upload_transcribe_and_see_the_figures(app_url, browser, speech_dir):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    outside: list[str] = []
    page_errors: list[str] = []

    def only_the_app(route):
        url = route.request.url
        if url.startswith((app_url, "data:", "blob:")):
            route.continue_()
        else:
            outside.append(url)
            route.abort()

    page.route("**/*", only_the_app)
    page.on("pageerror", lambda error: page_errors.append(str(error)))
    page.goto(app_url)
    button = page.locator("#transcribe-button")
    button.wait_for(timeout=60_000)

    # Nothing uploaded: a plain message, and the page goes on working.
    button.click()
    page.get_by_text("No audio: upload a file or record from the microphone first.").wait_for(timeout=30_000)
    page.locator("[data-testid='toast-close']").first.click()  # dismissed, as a user would
    page.locator("[data-testid='toast-body']").wait_for(state="detached", timeout=30_000)

    page.locator("#audio-input input[type=file]").set_input_files(str(speech_dir / JFK))
    # uploaded: the player and its download link appear in place of the drop zone
    page.locator("#audio-input [data-testid='download-link']").wait_for(state="attached", timeout=30_000)
    button.click()
    page.wait_for_function(
        "() => { const t = document.querySelector('#transcript textarea'); return t && t.value.length > 0; }",
        timeout=TRANSCRIBE_TIMEOUT_MS,
    )
    transcript = page.locator("#transcript textarea").input_value()
    assert normalize(transcript) == JFK_TEXT

    figures = page.locator("#figures")
    assert figures.locator(".asr-card").count() == 5
    figures_text = figures.inner_text()
    for label in (
        "speedup",
        "measured",
        "draft acceptance",
        "tokens per target pass",
        "passes: target / draft",
    ):
        assert label in figures_text, figures_text
    assert re.search(r"\d+\.\d\d×", figures_text), figures_text
    assert "Time per stage" in figures_text and "encoder" in figures_text and "draft passes" in figures_text

    speculation = page.locator("#speculation")
    n_drafted = speculation.locator(".asr-tok-draft").count()
    n_target = speculation.locator(".asr-tok-target").count()
    assert n_drafted > 0 and n_target > 0, (n_drafted, n_target)
    assert (
        normalize("".join(speculation.locator(".asr-tok-draft, .asr-tok-target").all_inner_texts()))
        == JFK_TEXT
    )

    plot = page.locator("#acceptance-plot img")
    plot.wait_for(timeout=30_000)
    assert plot.evaluate("img => img.complete && img.naturalWidth > 0")

    assert "0:00.00 →" in page.locator("#segments").inner_text()
    downloads = "".join(page.locator("#downloads").inner_text().split())  # name and suffix are separate
    for name in ("jfk.txt", "jfk.srt", "jfk.vtt", "jfk.json"):
        assert name in downloads, downloads

    ARTIFACTS.mkdir(exist_ok=True)
    page.wait_for_timeout(500)  # let the plot image settle
    page.screenshot(path=str(ARTIFACTS / "app.png"), full_page=True)
    assert outside == [], f"the page tried to reach outside the app: {outside}"
    assert page_errors == [], page_errors
    page.close()
