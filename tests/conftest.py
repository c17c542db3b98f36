"""Fixtures shared by the test suite."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SPEECH_DIR_ENV = "ASR_SPEECH_DIR"  # folder holding the shared real-speech set (its `public/` part is used)
DEFAULT_SPEECH_DIR = REPO_ROOT.parent / "shared" / "speech"

# huggingface_hub reads these once, when it is first imported; a test module importing transformers at the top
# is imported before any fixture runs, so set them as soon as pytest loads this file as well.
_OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
os.environ.update(_OFFLINE_ENV)
# `asr transcribe` runs on a server when one is running (issue #22): the suite's runs must be its own, never
# handed to a server a developer left running, so they look for one in a folder of their own.
os.environ["ASR_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="asr-tests-runtime-")


@pytest.fixture
def one_thread() -> Iterator[None]:
    """torch on one thread for the test (tiny models gain nothing from threads); a module asks for it with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True, scope="session")
def _offline_hub() -> Iterator[None]:
    """Tests never touch the network: Hugging Face libraries may only use their local cache."""
    os.environ.update(_OFFLINE_ENV)
    yield


@pytest.fixture(scope="session")
def speech_dir() -> Path:
    """The `public` folder of the real-speech set (`$ASR_SPEECH_DIR`, default `<repo>/../shared/speech`)."""
    root = Path(os.environ.get(SPEECH_DIR_ENV, DEFAULT_SPEECH_DIR))
    public = root / "public"
    if not public.is_dir():
        pytest.skip(f"real speech not found: no folder {public} (set {SPEECH_DIR_ENV} to the speech set)")
    return public
