"""Drafts that are separate models, and the figures speculative decoding reports.

1. Hugging Face drafts (the GPU path: distil-whisper drafting for whisper-large-v3), as tiny random models
   saved to folders: whatever the draft proposes, the output is the target's own greedy output; a draft
   sharing the target's encoder reuses its output, another runs its own on the window's mel; the target as
   its own draft has every proposal accepted, EOT included.
2. Incompatible drafts are refused with one line naming both models.
3. The CLI's --draft, --draft-k and --compare on a real clip, and the figures in its json (slow: real
   weights).
4. A speculative run's summary line never shows a speedup without saying whether it is estimated or
   measured.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from asr import cli, draft_factory, native_draft
from asr.decoding import MAX_DRAFT_K, DecodingOptions, DecodingTask
from asr.draft_factory import make_drafter
from asr.drafting import DecoderDrafter, ModelDrafter, NativeSelfDrafter, Proposal
from asr.errors import IncompatibleModelsError, InvalidOptionError
from asr.figures import RunStats, StageTimes, finish
from asr.model import Whisper
from asr.models import BUNDLED, LoadedModel, _package_file, load_model
from asr.tokenizer import Tokenizer
from asr.transcribe import TranscribeOptions, transcribe
from tests.util import TINY_EN_TOKENIZER, random_dims, random_model, to_transformers

REPO_ROOT = Path(__file__).resolve().parent.parent
HELLO = REPO_ROOT / "samples" / "hello.wav"
BASE_TOKENIZER = _package_file(BUNDLED["base"].tokenizer)

SAMPLE_LEN = 24
# The target's EOT row of the (tied) vocabulary head, flipped and scaled: a random model then ends its output
# with EOT after a handful of tokens (9 without timestamps, 7 with), so EOT must be reachable inside a draft.
EOT_ROW_FACTOR = -3.25


@pytest.fixture(autouse=True)
def _one_thread_for_tiny_models(request: pytest.FixtureRequest):
    """Tiny models gain nothing from threads, and lose a lot when another process holds the other core."""
    if request.node.get_closest_marker("slow") is not None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def save_hf(model: LoadedModel, directory: Path, tokenizer: Path = TINY_EN_TOKENIZER) -> str:
    """`model` as a transformers checkpoint folder with a tokenizer.json: what `load_model(folder)` reads."""
    to_transformers(model).save_pretrained(directory)
    shutil.copy(tokenizer, directory / "tokenizer.json")
    return str(directory)


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Folders of tiny random checkpoints: a target and drafts for it (name -> folder)."""
    root = tmp_path_factory.mktemp("hf")
    target = random_model(seed=24, dims=random_dims(n_state=32, n_head=4, n_layer=2))
    with torch.no_grad():
        target.model.decoder.token_embedding.weight[target.tokenizer.eot] *= EOT_ROW_FACTOR
    weights = target.model.state_dict()
    one_layer = dataclasses.replace(target.dims, n_text_layer=1)

    # distil-whisper's recipe: the teacher's encoder as is, a shallow decoder initialised from its layers
    distil = random_model(seed=31, dims=one_layer)
    distil.model.load_state_dict({k: v for k, v in weights.items() if not k.startswith("decoder.blocks.1.")})
    assert torch.equal(distil.model.encoder.conv1.weight, target.model.encoder.conv1.weight)
    # a draft of its own: random encoder and decoder
    stranger = random_model(seed=32, dims=one_layer)
    # the target with its encoder nudged: not the same encoder, so the draft must encode the mel itself, but
    # close enough that its proposals are all the target's tokens
    nudged = random_model(seed=24, dims=target.dims)
    nudged.model.load_state_dict(weights)
    with torch.no_grad():
        nudged.model.encoder.conv1.weight.add_(1e-4)
    # 128 mel bins (as whisper-large-v3 and distil-large-v3), the target's vocabulary
    mels_128 = random_model(seed=33, dims=dataclasses.replace(one_layer, n_mels=128))
    multilingual = random_model(seed=34, dims=dataclasses.replace(one_layer, n_vocab=51865))

    return {
        "target": save_hf(target, root / "target"),
        "copy": save_hf(target, root / "copy"),
        "distil": save_hf(distil, root / "distil"),
        "stranger": save_hf(stranger, root / "stranger"),
        "nudged": save_hf(nudged, root / "nudged"),
        "mels-128": save_hf(mels_128, root / "mels-128"),
        "multilingual": save_hf(multilingual, root / "multilingual", BASE_TOKENIZER),
        # the target's vocabulary size, but the multilingual tokenizer: other ids for EOT, SOT, ...
        "other-tokenizer": save_hf(stranger, root / "other-tokenizer", BASE_TOKENIZER),
    }


@pytest.fixture(scope="module")
def target(hf_dirs: dict[str, str]) -> LoadedModel:
    return load_model(hf_dirs["target"])


@pytest.fixture(scope="module")
def window(target: LoadedModel) -> tuple[torch.Tensor, torch.Tensor]:
    """(mel, audio_features): a random log-mel window and the target's encoder output for it."""
    mel = torch.randn(target.dims.n_mels, 3000, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        features = target.model.encoder(mel.unsqueeze(0))
    return mel, features


class Recorder:
    """Wraps a drafter's `propose` and keeps every non-empty proposal."""

    def __init__(self, drafter: DecoderDrafter) -> None:
        self.proposals: list[list[int]] = []
        self._propose = drafter.propose
        drafter.propose = self  # type: ignore[method-assign]

    def __call__(self, sequences, until, choice, rows) -> list[Proposal]:
        proposals = self._propose(sequences, until, choice, rows)
        self.proposals.extend(list(p.tokens) for p in proposals if p.tokens)
        return proposals


def plain_and_speculative(target, window, drafter, timestamps: bool, k: int | None):
    mel, features = window
    options = DecodingOptions(timestamps=timestamps, sample_len=SAMPLE_LEN, draft_k=k)
    plain = DecodingTask(target, options, "en").run(features)
    speculative = DecodingTask(target, options, "en").run(features, mel, drafter)
    return plain, speculative


# --- 1. drafts that are separate models -------------------------------------------------------------------


def test_a_draft_sharing_the_targets_encoder_reuses_its_output(hf_dirs, target):
    drafter = make_drafter(hf_dirs["distil"], target)
    assert isinstance(drafter, ModelDrafter)
    assert drafter.name == hf_dirs["distil"]
    assert drafter.encoder is None, "distil-whisper's encoder is the target's: it must not run twice"
    assert len(drafter.decoder.blocks) == 1


@pytest.mark.parametrize("name", ["stranger", "nudged"])
def test_a_draft_with_another_encoder_runs_its_own(hf_dirs, target, name):
    drafter = make_drafter(hf_dirs[name], target)
    assert isinstance(drafter, ModelDrafter)
    assert drafter.encoder is not None
    assert drafter.encoder is not target.model.encoder


@pytest.mark.parametrize("k", [1, 3, None], ids=["k1", "k3", "adaptive"])
@pytest.mark.parametrize("timestamps", [False, True], ids=["text", "timestamps"])
@pytest.mark.parametrize("name", ["distil", "stranger"])
def test_hf_draft_output_is_exactly_the_targets(hf_dirs, target, window, name, timestamps, k):
    drafter = make_drafter(hf_dirs[name], target)
    recorder = Recorder(drafter)
    plain, speculative = plain_and_speculative(target, window, drafter, timestamps, k)
    assert len(plain.tokens) >= 5, "a vacuous comparison proves nothing"
    assert speculative.tokens == plain.tokens
    assert speculative.sum_logprob == pytest.approx(plain.sum_logprob, abs=1e-3)
    assert speculative.no_speech_prob == pytest.approx(plain.no_speech_prob, abs=1e-6)
    loop = speculative.loop
    assert loop.n_target_passes >= 2
    assert loop.n_proposed == sum(len(p) for p in recorder.proposals) > 0
    assert sum(loop.accepted_lengths.values()) == len(recorder.proposals)
    assert sum(n * count for n, count in loop.accepted_lengths.items()) == loop.n_accepted
    if k is not None:
        assert max(len(p) for p in recorder.proposals) <= k


def test_a_distilled_draft_is_partly_right_so_both_accept_and_rollback_run(hf_dirs, target, window):
    """Not every comparison above is of a draft that is always wrong: this one is right now and then."""
    drafter = make_drafter(hf_dirs["distil"], target)
    plain, speculative = plain_and_speculative(target, window, drafter, timestamps=False, k=3)
    assert speculative.tokens == plain.tokens
    assert 0 < speculative.loop.n_accepted < speculative.loop.n_proposed


@pytest.mark.parametrize("k", [1, 3, None], ids=["k1", "k3", "adaptive"])
@pytest.mark.parametrize("timestamps", [False, True], ids=["text", "timestamps"])
@pytest.mark.parametrize("name", ["copy", "target", "nudged"])
def test_the_target_as_its_own_draft_has_every_proposal_accepted(
    hf_dirs, target, window, name, timestamps, k
):
    """A saved copy, the target's own folder, and a copy with its own (nudged) encoder that must encode
    the window's mel: every proposal is the target's own token, EOT included."""
    drafter = make_drafter(hf_dirs[name], target)
    recorder = Recorder(drafter)
    plain, speculative = plain_and_speculative(target, window, drafter, timestamps, k)
    loop = speculative.loop
    assert 5 <= len(plain.tokens) < SAMPLE_LEN, "the output must end with EOT, not at the length limit"
    assert speculative.tokens == plain.tokens
    assert loop.n_accepted == loop.n_proposed > 0
    assert loop.n_target_passes < len(speculative.tokens)
    # EOT came inside the last draft, was accepted, and ended decoding there; no draft ran past an EOT
    eot = target.tokenizer.eot
    assert recorder.proposals[-1][-1] == eot
    assert all(eot not in proposal[:-1] for proposal in recorder.proposals)
    assert sum(proposal.count(eot) for proposal in recorder.proposals) == 1


def test_a_drafter_keeps_working_across_windows(hf_dirs, target):
    """One drafter serves every window of a recording (its cache restarts per window); --compare's check."""
    samples = np.random.default_rng(0).standard_normal(16000 * 40).astype(np.float32) * 0.1
    result = transcribe(
        target,
        samples,
        DecodingOptions(draft=hf_dirs["copy"], sample_len=SAMPLE_LEN),
        TranscribeOptions(compare=True, condition_on_previous_text=False),
    )
    stats = result.stats
    assert stats.n_windows >= 2
    assert stats.draft == hf_dirs["copy"]
    assert stats.identical_to_target is True
    assert stats.accepted == stats.proposed > 0
    assert stats.plain is not None and stats.target_passes < stats.plain.target_passes


# --- 2. incompatible drafts ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["multilingual", "other-tokenizer"])
def test_a_draft_with_another_tokenizer_is_refused_in_one_line(hf_dirs, target, name):
    with pytest.raises(IncompatibleModelsError) as info:
        make_drafter(hf_dirs[name], target)
    message = str(info.value)
    assert "\n" not in message
    assert repr(hf_dirs[name]) in message and repr(hf_dirs["target"]) in message


def test_a_draft_that_cannot_read_the_targets_mel_is_refused(hf_dirs, target):
    with pytest.raises(IncompatibleModelsError, match="128-bin") as info:
        make_drafter(hf_dirs["mels-128"], target)
    assert repr(hf_dirs["mels-128"]) in str(info.value) and repr(hf_dirs["target"]) in str(info.value)


def test_an_empty_draft_name_is_an_option_error(target):
    with pytest.raises(InvalidOptionError, match="'none', 'self' or a model name"):
        make_drafter("", target)


def _bare_model(n_state: int, tokenizer: Tokenizer) -> LoadedModel:
    dims = random_dims(n_state=n_state, n_head=2, n_layer=1, n_text_ctx=8, n_vocab=64)
    return LoadedModel(f"bare-{n_state}", Whisper(dims), tokenizer, (), ())


def test_the_self_draft_is_built_from_the_model_asked_for(monkeypatch):
    monkeypatch.setattr(draft_factory, "_SELF_DECODERS", type(draft_factory._SELF_DECODERS)())
    tokenizer = Tokenizer(TINY_EN_TOKENIZER, multilingual=False)
    for _ in range(20):
        old = Whisper(random_dims(n_state=8, n_head=2, n_layer=1, n_text_ctx=8, n_vocab=64))
        address = id(old)
        make_drafter("self", LoadedModel("old", old, tokenizer, (), ()))
        dims = random_dims(n_state=16, n_head=2, n_layer=1, n_text_ctx=8, n_vocab=64)
        del old  # freed at once (no cycles): CPython usually hands its memory to the next module created
        new = Whisper(dims)
        if id(new) == address:
            break
        draft_factory._SELF_DECODERS.clear()
        gc.collect()
    else:
        pytest.skip("CPython did not reuse the freed model's address")
    drafter = make_drafter("self", LoadedModel("new", new, tokenizer, (), ()))
    assert drafter.decoder.dims == new.dims


# --- 4. the summary line labels every speedup ---------------------------------------------------------------

SPEEDUP = re.compile(r"speedup (\S+)")


def assert_speedups_labelled(line: str) -> None:
    """Every "speedup <number>x" is followed by its kind; "speedup n/a" only when nothing was decoded."""
    matches = list(SPEEDUP.finditer(line))
    assert matches, f"no speedup in a speculative run's line: {line}"
    for match in matches:
        value = match.group(1)
        if value == "n/a":
            assert "nothing decoded" in line[match.end() :], line
            continue
        assert re.fullmatch(r"\d+\.\d\dx", value), line
        assert re.match(r" \((estimated|measured), ", line[match.end() :]), f"bare speedup: {line}"


@pytest.mark.parametrize("compare", [False, True], ids=["estimated", "measured"])
def test_a_speculative_summary_line_gives_the_kind_of_its_speedup(hf_dirs, target, compare):
    samples = np.random.default_rng(1).standard_normal(16000 * 3).astype(np.float32) * 0.1
    result = transcribe(
        target,
        samples,
        DecodingOptions(draft=hf_dirs["distil"], sample_len=SAMPLE_LEN),
        TranscribeOptions(compare=compare),
    )
    kind = "measured" if compare else "estimated"
    assert result.stats.speedup_kind == kind
    line = cli._summary_line("noise.wav", result.stats, result.duration_s)
    assert_speedups_labelled(line)
    assert f"({kind}, decode phase" in line
    assert f"draft {hf_dirs['distil']} (k adaptive)" in line


def test_a_speculative_summary_line_on_silence_says_nothing_was_decoded(hf_dirs, target):
    result = transcribe(
        target, np.zeros(16000 * 2, np.float32), DecodingOptions(draft=hf_dirs["distil"]), TranscribeOptions()
    )
    assert result.stats.n_windows == 0
    line = cli._summary_line("silence.wav", result.stats, result.duration_s)
    assert "speedup n/a (nothing decoded)" in line
    assert_speedups_labelled(line)


# --- 3. the CLI on a real clip ------------------------------------------------------------------------------


def asr_lines(stderr: str) -> list[str]:
    return [line[line.index("asr: ") :] for line in re.split(r"[\r\n]+", stderr) if "asr: " in line]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys, out_dir: Path, *flags: str) -> tuple[str, dict, str]:
    """Transcribe hello.wav to json; returns (stdout, stats, the summary line)."""
    code, out, err = run_cli(capsys, "transcribe", HELLO, "--format", "json", "--output-dir", out_dir, *flags)
    assert code == 0, err
    assert "Traceback" not in err
    lines = asr_lines(err)
    assert len(lines) == 1, err
    data = json.loads((out_dir / "hello.json").read_text(encoding="utf-8"))
    assert out == data["text"] + "\n", "stdout is exactly the transcript"
    return out, data["stats"], lines[0]


@pytest.mark.slow
def test_cli_json_figures_of_the_default_self_draft(capsys, tmp_path, monkeypatch):
    passes_with_a_proposal = []
    propose = DecoderDrafter.propose

    def counting(self, sequences, until, choice, rows):
        proposals = propose(self, sequences, until, choice, rows)
        passes_with_a_proposal.extend(len(p.tokens) for p in proposals if p.tokens)
        return proposals

    monkeypatch.setattr(DecoderDrafter, "propose", counting)
    native_propose = NativeSelfDrafter.propose  # its own: one cache per sample row

    def counting_native(self, sequences, until, choice, rows):
        proposals = native_propose(self, sequences, until, choice, rows)
        passes_with_a_proposal.extend(len(p.tokens) for p in proposals if p.tokens)
        return proposals

    monkeypatch.setattr(NativeSelfDrafter, "propose", counting_native)
    _, stats, line = run_json(capsys, tmp_path)
    assert (stats["draft"], stats["target"], stats["draft_k"]) == ("self", "base", "adaptive")
    native = native_draft.library() is not None
    assert stats["draft_step"] == ("native" if native else "pytorch")
    assert 0 < stats["accepted"] <= stats["proposed"] == sum(passes_with_a_proposal)
    assert stats["acceptance_rate"] == pytest.approx(stats["accepted"] / stats["proposed"])
    assert stats["acceptance_rate"] > 0.5, "the self draft is a copy of the target: mostly right"
    histogram = stats["accepted_length_histogram"]
    assert isinstance(histogram, dict) and histogram
    assert all(isinstance(n, str) and isinstance(c, int) and c > 0 for n, c in histogram.items())
    assert sum(histogram.values()) == len(passes_with_a_proposal)
    assert sum(int(n) * c for n, c in histogram.items()) == stats["accepted"]
    assert stats["target_passes"] >= len(passes_with_a_proposal) + stats["n_windows"]
    assert stats["tokens_per_target_pass"] == pytest.approx(stats["n_tokens"] / stats["target_passes"])
    assert stats["tokens_per_target_pass"] > 1.5
    assert stats["draft_passes"] >= 1
    times = stats["time_s"]
    assert all(times[key] > 0 for key in ("encoder", "draft", "target", "total"))
    assert times["draft"] + times["target"] <= times["decode"] <= times["total"]
    assert stats["tokens_per_s"] > 0
    assert isinstance(stats["speedup"], float) and stats["speedup"] > 0
    assert stats["speedup_kind"] == "estimated"
    assert "identical_to_target" in stats and stats["identical_to_target"] is None
    assert_speedups_labelled(line)
    assert "draft self (k adaptive)" in line
    assert (f"{stats['draft_passes']} native draft passes" in line) == native


@pytest.mark.slow
def test_cli_compare_measures_the_speedup_and_checks_identity(capsys, tmp_path):
    out, stats, line = run_json(capsys, tmp_path, "--compare")
    assert out.count("\n") == 1, "the plain reference run prints nothing"
    assert stats["speedup_kind"] == "measured"
    assert stats["identical_to_target"] is True
    assert stats["speedup"] > 0 and stats["speedup_end_to_end"] > 0
    assert stats["plain"]["target_passes"] > stats["target_passes"]
    assert_speedups_labelled(line)
    assert "output identical to the model alone" in line


def test_compare_counts_the_work_both_runs_share_at_its_faster_timing():
    """A cold process's first log-mel, encoder and projection calls land on the plain run (it goes
    first): the end-to-end ratio takes each shared stage at the faster of the two runs' timings."""

    def stats(mel, encoder, cross_kv, decode, total):
        times = StageTimes(
            mel=mel, encoder=encoder, cross_kv=cross_kv, target=decode, decode=decode, total=total
        )
        figures = RunStats("t", "self", "pytorch", "adaptive", None, "cpu", "float32", time_s=times)
        figures.n_tokens, figures.target_passes, figures.n_windows = 10, 10, 1
        return figures

    plain = stats(0.1, 0.9, 0.2, 1.0, 2.2)
    spec = stats(0.01, 0.5, 0.05, 0.5, 0.0)
    finish(spec, random_model(seed=1), 5.0, time.perf_counter() - 1.06, plain, identical=True)  # 1.06 s
    assert spec.speedup == pytest.approx(2.0)  # decode phase: as measured
    # plain: 2.2 s with its mel, encoder and projection at spec's 0.01, 0.5, 0.05 s: 1.56 s
    assert spec.speedup_end_to_end == pytest.approx(1.56 / 1.06, rel=0.01)
    assert spec.speedup_kind == "measured" and spec.identical_to_target is True
    assert spec.plain is not None and spec.plain.time_s is plain.time_s


@pytest.mark.slow
def test_cli_draft_none_and_draft_k_keep_the_transcript(capsys, tmp_path):
    text_self, _, _ = run_json(capsys, tmp_path / "self")
    text_none, stats, line = run_json(capsys, tmp_path / "none", "--draft", "none")
    assert stats["draft"] == "none" and stats["speedup_kind"] == "baseline"
    assert stats["draft_step"] is None
    assert stats["proposed"] == stats["draft_passes"] == 0
    assert not re.search(r"speedup \d", line), f"a plain run shows no speedup: {line}"
    text_k3, stats, line = run_json(capsys, tmp_path / "k3", "--draft-k", "3")
    assert stats["draft_k"] == 3 and stats["speedup_kind"] == "estimated"
    assert max(int(n) for n in stats["accepted_length_histogram"]) <= 3
    assert "(k 3)" in line
    assert_speedups_labelled(line)
    assert text_self == text_none == text_k3
    assert "welcome" in text_self.lower()


@pytest.mark.parametrize("k", ["0", "99"])
def test_cli_draft_k_out_of_range_is_a_usage_error(capsys, k):
    code, out, err = run_cli(capsys, "transcribe", HELLO, "--draft-k", k)
    assert code == cli.EXIT_USAGE == 2
    assert out == ""
    assert "Traceback" not in err
    (line,) = asr_lines(err)
    assert line.startswith("asr: error: ") and "--draft-k" in line and f"1 to {MAX_DRAFT_K}" in line


@pytest.mark.slow
def test_cli_refuses_an_english_only_draft_for_a_multilingual_target(capsys):
    code, out, err = run_cli(capsys, "transcribe", HELLO, "--draft", "tiny.en")
    assert code != 0
    assert out == ""
    assert "Traceback" not in err
    (line,) = asr_lines(err)
    assert line.startswith("asr: error: ")
    assert "'tiny.en'" in line and "'base'" in line
