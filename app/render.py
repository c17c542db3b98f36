"""Pure rendering: a finished transcription -> the HTML, figure and rows the page shows.

Nothing here touches Gradio or a model's weights: every function takes plain data (a run's figures,
segments, a tokenizer) and returns a string or a matplotlib figure, so each is tested directly.

Colours are one pair used everywhere on the page: green for tokens the draft proposed and the target
accepted, amber for tokens the target wrote itself (after a rejection, as the bonus token of a pass, or
with no draft). Inline styles only, with explicit text colours: the page looks the same in Gradio's light
and dark themes and needs no stylesheet from anywhere.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from matplotlib.figure import Figure

from asr.audio import TIME_PRECISION
from asr.figures import RunStats, StageTimes
from asr.loop import PassRecord
from asr.results import Segment

DRAFT_COLOUR = "#16a34a"  # accepted draft tokens (text and bars)
DRAFT_BACKGROUND = "#dcfce7"
TARGET_COLOUR = "#d97706"  # tokens the target wrote itself
TARGET_BACKGROUND = "#fef3c7"
TEXT_COLOUR = "#111827"
MUTED_COLOUR = "#4b5563"
CARD_BACKGROUND = "#f9fafb"
BORDER_COLOUR = "#e5e7eb"
SAMPLED_MARK = "⟳"  # beside text decoded above temperature 0: sampled, after Whisper's fallback

# Stages of `RunStats.time_s` in the order they run, with the names the page gives them. "decode" holds the
# draft and target passes, so the rest of it is shown as its own bar (verification, bookkeeping, Python).
STAGES = (
    ("load_audio", "load audio"),
    ("mel", "log-mel"),
    ("encoder", "encoder"),
    ("cross_kv", "cross-attention K/V"),
    ("draft", "draft passes"),
    ("target", "target passes"),
    ("decode_other", "rest of the token loop"),
)
FIGURES_PLACEHOLDER = (
    f'<div style="color:{MUTED_COLOUR};font-size:0.9rem;padding:0.5rem 0">After a transcription: the speedup '
    "(measured or estimated), how many draft tokens the target accepted, tokens per target pass, target and "
    "draft passes, and the time per stage.</div>"
)
SPECULATION_PLACEHOLDER = (
    f'<div style="color:{MUTED_COLOUR};font-size:0.9rem">Every token of the transcript, '
    f'<span style="background:{DRAFT_BACKGROUND};color:{TEXT_COLOUR};padding:0 4px;border-radius:3px">green'
    "</span> where the draft proposed it and the target accepted it, "
    f'<span style="background:{TARGET_BACKGROUND};color:{TEXT_COLOUR};padding:0 4px;border-radius:3px">amber'
    "</span> where the target wrote it itself (after a rejection, or as the one token of its own each pass "
    "adds); then the tokens each target pass produced.</div>"
)
SPEEDUP_KINDS = {
    "measured": "measured: the model alone also decoded this input",
    "estimated": "estimated from this machine's single-pass time; tick the comparison box to measure it",
    "baseline": "plain decoding: no draft, nothing to compare",
}


def format_time(seconds: float) -> str:
    """`M:SS.ss`, or `H:MM:SS.ss` from an hour on."""
    seconds = max(0.0, seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{int(hours)}:{int(minutes):02d}:{secs:05.2f}"
    return f"{int(minutes)}:{secs:05.2f}"


def _card(title: str, value: str, note: str = "", accent: str = TEXT_COLOUR) -> str:
    return (
        f'<div class="asr-card" style="flex:1 1 7rem;min-width:7rem;padding:0.5rem 0.6rem;'
        f"border:1px solid {BORDER_COLOUR};border-radius:0.5rem;background:{CARD_BACKGROUND};"
        f'color:{TEXT_COLOUR}">'
        f'<div style="font-size:0.8rem;color:{MUTED_COLOUR}">{html.escape(title)}</div>'
        f'<div style="font-size:1.35rem;font-weight:600;color:{accent};line-height:1.3">'
        f"{html.escape(value)}</div>"
        f'<div style="font-size:0.75rem;color:{MUTED_COLOUR}">{html.escape(note)}</div>'
        "</div>"
    )


def _ratio(value: Any) -> str:
    return f"{value:.2f}×" if isinstance(value, (int, float)) and math.isfinite(value) else "n/a"


def _speedup_colour(stats: RunStats) -> str:
    if stats.speedup is None or stats.speedup_kind == "baseline":
        return TEXT_COLOUR
    return DRAFT_COLOUR if stats.speedup >= 1 else TARGET_COLOUR


def figures_html(stats: RunStats, duration_s: float, language: str) -> str:
    """The headline figures as cards, a line saying what ran, and the time per stage as bars."""
    kind = stats.speedup_kind or ""
    speedup_note = kind or "n/a"
    if kind == "measured" and stats.speedup_end_to_end is not None:
        speedup_note = f"measured · end to end {_ratio(stats.speedup_end_to_end)}"
    identical = stats.identical_to_target
    if identical is True:
        identity = ("yes", "checked token by token" if kind == "measured" else "plain decoding", DRAFT_COLOUR)
    elif identical is False:
        identity = ("NO", "differs from the model alone: please report it", "#dc2626")
    else:
        identity = ("not checked", "tick the comparison box to check", MUTED_COLOUR)
    rate = stats.acceptance_rate
    if not stats.has_draft:
        acceptance = ("—", "no draft")
    elif rate is None:
        acceptance = ("n/a", "nothing proposed")
    else:
        unit = "draft steps confirmed" if stats.beam_size else "proposed"
        acceptance = (f"{rate:.0%}", f"{stats.accepted} of {stats.proposed} {unit}")
    if stats.beam_size:  # beam search: the draft proposes steps of a tree, the target confirms steps
        per_pass = (
            "beam steps per target pass",
            f"{stats.beam_steps_per_target_pass or 0.0:.1f}",
            f"{stats.beam_steps} steps",
        )
    else:
        per_pass = (
            "tokens per target pass",
            f"{stats.tokens_per_target_pass:.1f}",
            f"{stats.n_tokens} tokens",
        )
    cards = [
        _card("speedup (decode phase)", _ratio(stats.speedup), speedup_note, _speedup_colour(stats)),
        _card("same output as target alone", identity[0], identity[1], identity[2]),
        _card("draft hit rate" if stats.beam_size else "draft acceptance", *acceptance),
        _card(*per_pass),
        _card(
            "passes: target / draft",
            f"{stats.target_passes} / {stats.draft_passes}",
            f"{stats.tokens_per_s:.0f} tokens/s",
        ),
    ]
    mode = f"beam search ({stats.beam_size} beams)" if stats.beam_size else "greedy"
    what_ran = (
        f"{duration_s:.1f} s of audio, language {language} · target {stats.target} "
        f"({stats.dtype}, {stats.device}) · draft {stats.draft}"
        + (f", k {stats.draft_k}" if stats.has_draft else "")
        + (", native step" if stats.draft_step == "native" else "")
        + f" · {mode}"
        + (
            f" · voice activity: {stats.audio_skipped_s:.1f} s without speech skipped"
            if stats.audio_skipped_s
            else ""
        )
    )
    basis = SPEEDUP_KINDS.get(kind, "")
    return (
        f'<div class="asr-figures" style="color:{TEXT_COLOUR}">'
        f'<div style="display:flex;flex-wrap:wrap;gap:0.5rem">{"".join(cards)}</div>'
        f'<div style="font-size:0.8rem;color:{MUTED_COLOUR};margin:0.4rem 0 0.6rem">'
        f"{html.escape(what_ran)}<br>speedup {html.escape(basis)}</div>"
        f"{temperatures_html(stats)}"
        f"{stage_times_html(stats.time_s)}"
        "</div>"
    )


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def temperatures_html(stats: RunStats) -> str:
    """Temperature fallback: how many windows fell back, and per temperature the decodes and acceptance."""
    by_temperature = sorted(stats.by_temperature.items(), key=lambda item: float(item[0]))
    n_fell_back = stats.windows_decoded_again
    n_failed = stats.windows_all_temperatures_failed
    summary = f"{n_fell_back} of {_plural(stats.n_windows, 'window')} fell back to a higher temperature"
    if stats.temperature_retries:
        summary += f" ({_plural(stats.temperature_retries, 'decode')} again)"
    if n_failed:
        summary += (
            f"; {n_failed} failed the check at every temperature (repetitive or improbable text): "
            "kept the most probable result that is not a repetition loop"
        )
    rows = []
    # A grid of spans, not a <table>: Gradio's stylesheet draws borders round tables that inline styles
    # cannot take off. Each row is one element (display: contents) so it can be found and coloured.
    cell = "padding:1px 0;text-align:right;font-variant-numeric:tabular-nums"
    for key, figures in by_temperature:
        if not stats.has_draft:
            acceptance = "—"
        elif figures.acceptance_rate is None:
            acceptance = "n/a"
        else:
            acceptance = f"{figures.acceptance_rate:.0%} ({figures.accepted}/{figures.proposed})"
        sampled = float(key) > 0
        values = (
            f"T {float(key):g}" + (f" {SAMPLED_MARK}" if sampled else ""),
            str(figures.decodes),
            acceptance,
            str(figures.n_tokens),
            str(figures.target_passes),
            f"{figures.decode_s:.2f} s",
        )
        colour = TARGET_COLOUR if sampled else TEXT_COLOUR
        rows.append(
            f'<div class="asr-temperature" style="display:contents;color:{colour}">'
            + "".join(f'<span style="{cell};color:{colour}">{html.escape(v)}</span>' for v in values)
            + "</div>"
        )
    header = "".join(
        f'<span style="{cell};font-weight:600;color:{MUTED_COLOUR}">{name}</span>'
        for name in ("temperature", "windows", "draft acceptance", "tokens", "target passes", "decode")
    )
    table = (
        '<div style="display:grid;grid-template-columns:repeat(6,auto);justify-content:start;'
        f'column-gap:1.2rem;font-size:0.8rem;margin-top:0.2rem">{header}{"".join(rows)}</div>'
        if rows
        else ""
    )
    return (
        f'<div class="asr-temperatures" style="border:1px solid {BORDER_COLOUR};border-radius:0.5rem;'
        f'padding:0.5rem 0.8rem;background:{CARD_BACKGROUND};color:{TEXT_COLOUR};margin-bottom:0.5rem">'
        f'<div style="font-size:0.85rem;font-weight:600">Temperature fallback</div>'
        f'<div style="font-size:0.8rem;color:{MUTED_COLOUR}">{html.escape(summary)}</div>{table}</div>'
    )


def stage_times_html(times: StageTimes) -> str:
    """Time per stage as horizontal bars, each as a share of the total."""
    values = {key: float(getattr(times, key)) for key, _ in STAGES if key != "decode_other"}
    values["decode_other"] = max(0.0, times.decode - values["draft"] - values["target"])
    total = times.total or sum(values.values()) or 1.0
    rows = []
    for key, label in STAGES:
        seconds = values[key]
        colour = {"draft": DRAFT_COLOUR, "target": TARGET_COLOUR}.get(key, "#6b7280")
        width = max(0.5, min(100.0, 100 * seconds / total))
        rows.append(
            f'<div style="display:flex;align-items:center;gap:0.5rem;font-size:0.8rem;color:{TEXT_COLOUR}">'
            f'<span style="flex:0 0 10rem;text-align:right">{label}</span>'
            f'<span style="flex:1 1 auto;background:{BORDER_COLOUR};border-radius:3px;height:0.7rem">'
            f'<span style="display:block;width:{width:.1f}%;height:100%;background:{colour};'
            f'border-radius:3px"></span></span>'
            f'<span style="flex:0 0 4.5rem;font-variant-numeric:tabular-nums">{seconds:.2f} s</span></div>'
        )
    return (
        f'<div class="asr-stages" style="border:1px solid {BORDER_COLOUR};border-radius:0.5rem;'
        f'padding:0.5rem 0.8rem;background:{CARD_BACKGROUND}">'
        f'<div style="font-size:0.85rem;font-weight:600;color:{TEXT_COLOUR};margin-bottom:0.3rem">'
        f"Time per stage (total {times.total:.2f} s)</div>{''.join(rows)}</div>"
    )


@dataclass(frozen=True)
class TokenPiece:
    """One unit of the speculation picture: text and who wrote it ("draft", "target" or "timestamp"), or
    "sampled": the temperature of a segment decoded above 0, before its tokens."""

    text: str
    origin: str


def token_pieces(segments: Sequence[Segment], tokenizer: Any) -> list[TokenPiece]:
    """Every token of the transcript with its origin, in order.

    A BPE token can hold part of a UTF-8 character; such tokens are joined with the next ones until the
    text decodes, and the joined piece counts as drafted only if all its tokens were. A segment sampled
    above temperature 0 (the fallback) starts with a "sampled" piece naming its temperature.
    """
    pieces: list[TokenPiece] = []
    for segment in segments:
        if segment.temperature > 0:
            pieces.append(TokenPiece(f"{SAMPLED_MARK} T {segment.temperature:g}", "sampled"))
        drafted = list(segment.drafted) + [False] * (len(segment.tokens) - len(segment.drafted))
        pending: list[int] = []
        pending_drafted = True
        # Timestamp tokens count from the start of their 30-s window; the segment's start is its first one.
        first = segment.tokens[0] if segment.tokens else 0
        window_offset = segment.start
        if first >= tokenizer.timestamp_begin:
            window_offset -= (first - tokenizer.timestamp_begin) * TIME_PRECISION
        for token, was_drafted in zip(segment.tokens, drafted, strict=False):
            if token >= tokenizer.timestamp_begin:
                seconds = window_offset + (token - tokenizer.timestamp_begin) * TIME_PRECISION
                pieces.append(TokenPiece(format_time(seconds), "timestamp"))
                continue
            if token >= tokenizer.eot:  # a special token: never part of the text
                continue
            pending.append(token)
            pending_drafted = pending_drafted and was_drafted
            text = tokenizer.decode(pending)
            if "\ufffd" in text and len(pending) < 4:
                continue
            pieces.append(TokenPiece(text, "draft" if pending_drafted else "target"))
            pending, pending_drafted = [], True
        if pending:
            pieces.append(TokenPiece(tokenizer.decode(pending), "draft" if pending_drafted else "target"))
    return pieces


def speculation_html(pieces: Sequence[TokenPiece]) -> str:
    """The transcript with each token coloured by who wrote it, under a legend."""
    n_draft = sum(p.origin == "draft" for p in pieces)
    n_target = sum(p.origin == "target" for p in pieces)
    styles = {
        "draft": f"background:{DRAFT_BACKGROUND};border-bottom:2px solid {DRAFT_COLOUR}",
        "target": f"background:{TARGET_BACKGROUND};border-bottom:2px solid {TARGET_COLOUR}",
        "timestamp": f"color:{MUTED_COLOUR};font-size:0.7rem;border:1px solid {BORDER_COLOUR}",
        "sampled": f"color:{TEXT_COLOUR};font-size:0.7rem;border:1px solid {TARGET_COLOUR}",
    }
    titles = {
        "draft": "proposed by the draft, accepted by the target",
        "target": "written by the target",
        "timestamp": "timestamp token",
        "sampled": "the segment after this mark was sampled at this temperature (the temperature fallback)",
    }
    spans = [
        f'<span class="asr-tok asr-tok-{p.origin}" title="{titles[p.origin]}" '
        f'style="{styles[p.origin]};white-space:pre-wrap;border-radius:3px;padding:0 1px;margin:0 1px">'
        f"{html.escape(p.text)}</span>"
        for p in pieces
    ]
    legend = (
        f'<span style="{styles["draft"]};padding:0 4px;border-radius:3px">drafted and accepted</span> '
        f"{n_draft} &nbsp; "
        f'<span style="{styles["target"]};padding:0 4px;border-radius:3px">written by the target</span> '
        f"{n_target}"
    )
    n_sampled = sum(p.origin == "sampled" for p in pieces)
    if n_sampled:
        legend += (
            f' &nbsp; <span style="{styles["sampled"]};padding:0 4px;border-radius:3px">'
            f"{SAMPLED_MARK} T</span> "
            f"{_plural(n_sampled, 'segment')} sampled at that temperature (fallback)"
        )
    return (
        f'<div class="asr-speculation" style="color:{TEXT_COLOUR}">'
        f'<div style="font-size:0.8rem;color:{MUTED_COLOUR};margin-bottom:0.4rem">{legend}</div>'
        f'<div style="line-height:2;font-size:1rem;background:#ffffff;border:1px solid {BORDER_COLOUR};'
        f'border-radius:0.5rem;padding:0.5rem 0.7rem">{"".join(spans) or "(no tokens)"}</div></div>'
    )


def acceptance_figure(passes: Sequence[PassRecord], drafting: bool, beam_search: bool = False) -> Figure:
    """Stacked bars per target pass, in decoding order (the loop's own record): what it accepted of the
    draft's proposal (green) and what the target added itself (amber); tokens, or beam search's steps."""
    unit = "beam steps" if beam_search else "tokens"
    accepted = [p.n_accepted for p in passes]
    own = [p.n_committed - p.n_accepted for p in passes]
    figure = Figure(figsize=(7.0, 2.3), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    numbers = list(range(1, len(passes) + 1))
    axes.bar(numbers, accepted, color=DRAFT_COLOUR, width=0.8, label="drafted and accepted")
    axes.bar(numbers, own, bottom=accepted, color=TARGET_COLOUR, width=0.8, label="written by the target")
    axes.set_xlabel("target pass")
    axes.set_ylabel(unit)
    title = f"{unit.capitalize()} per target pass" + ("" if drafting else " (no draft: one each)")
    axes.set_title(title, fontsize=10, loc="left")
    axes.spines[["top", "right"]].set_visible(False)
    axes.yaxis.get_major_locator().set_params(integer=True)
    if len(numbers) <= 40:
        axes.set_xticks(numbers if len(numbers) <= 20 else numbers[::2])
    # above the axes, beside the title: never over a bar
    axes.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False, ncols=2)
    axes.set_ylim(0, max([p.n_committed for p in passes] + [0]) + 1.2)
    return figure


def sampled_title(segment: Segment, first_temperature: float = 0.0) -> str:
    """What a segment decoded above temperature 0 is: sampled, and why (a fallback, or where the schedule
    starts)."""
    why = (
        "the temperature fallback: at lower temperatures the window's text looked repetitive or improbable"
        if segment.temperature > first_temperature
        else "the first temperature of the schedule"
    )
    return (
        f"sampled at temperature {segment.temperature:g} ({why}); "
        f"compression ratio {segment.compression_ratio:.2f}"
    )


def _sampled_badge(segment: Segment, first_temperature: float) -> str:
    return (
        f'<span class="asr-sampled" title="{html.escape(sampled_title(segment, first_temperature))}" '
        f'style="flex:0 0 auto;background:{TARGET_BACKGROUND};color:{TEXT_COLOUR};border:1px solid '
        f'{TARGET_COLOUR};border-radius:3px;padding:0 4px;font-size:0.75rem">'
        f"{SAMPLED_MARK} T {segment.temperature:g}</span>"
    )


def _segment_text(segment: Segment) -> str:
    """The segment's text; with word timings, each word a span whose tooltip gives its time."""
    if not segment.words:
        return html.escape(segment.text.strip())
    spans = []
    for w in segment.words:
        tip = f"{format_time(w.start)} → {format_time(w.end)} · p {w.probability:.2f}"
        spans.append(
            f'<span class="asr-word" title="{tip}" data-start="{w.start:.2f}" data-end="{w.end:.2f}" '
            f'style="cursor:help">{html.escape(w.word)}</span>'
        )
    return "".join(spans).strip()


def segments_html(segments: Sequence[Segment], first_temperature: float = 0.0) -> str:
    """Segment times and text, one row each, in a box that scrolls past a dozen rows. A segment decoded
    above temperature 0 (sampled: Whisper's fallback) carries a badge with its temperature."""
    rows = "".join(
        f'<div class="asr-segment" style="display:flex;gap:0.8rem;padding:1px 0">'
        f'<span style="flex:0 0 auto;color:{MUTED_COLOUR};font-variant-numeric:tabular-nums">'
        f"{format_time(s.start)} → {format_time(s.end)}</span>"
        + (_sampled_badge(s, first_temperature) if s.temperature > 0 else "")
        + f"<span>{_segment_text(s)}</span></div>"
        for s in segments
    )
    if not rows:
        return ""
    n_sampled = sum(s.temperature > 0 for s in segments)
    key = (
        f" · {SAMPLED_MARK} T: {_plural(n_sampled, 'segment')} sampled at that temperature (fallback)"
        if n_sampled
        else ""
    )
    return (
        f'<div class="asr-segments" style="max-height:12rem;overflow-y:auto;border:1px solid {BORDER_COLOUR};'
        f"border-radius:0.5rem;padding:0.4rem 0.7rem;background:{CARD_BACKGROUND};color:{TEXT_COLOUR};"
        f'font-size:0.9rem">'
        f'<div style="font-size:0.8rem;color:{MUTED_COLOUR};margin-bottom:0.2rem">Segments{key}</div>'
        f"{rows}</div>"
    )


# --- live captions ------------------------------------------------------------------------------------------

LIVE_PLACEHOLDER = (
    f'<div class="asr-live" style="color:{MUTED_COLOUR};font-size:0.9rem">'
    "Press <b>Record</b> and speak: committed text appears here as you talk, the tentative rest in grey. "
    "Press <b>Stop</b> for the transcript, its downloads and figures.</div>"
)

LIVE_SPECULATION_NOTE = (
    f'<div style="color:{MUTED_COLOUR};font-size:0.9rem">Live: every update decoded the last seconds again; '
    "the figures above say how many tokens came from the previous update's text and how many from the "
    "draft.</div>"
)


def live_html(committed: str, tentative: str, stats: dict[str, Any], heard_s: float) -> str:
    """Live captions: the committed text, the tentative tail (may still change) visibly apart, and a line
    of running figures (`stats`: `LiveStats.to_dict()`)."""
    latency = stats.get("latency_mean_s")
    status = [f"{format_time(heard_s)} heard", f"{_plural(stats.get('updates', 0), 'update')}"]
    if stats.get("update_time_mean_s") is not None:
        status.append(f"update {stats['update_time_mean_s']:.2f} s (max {stats['update_time_max_s']:.2f} s)")
    status.append(
        f"commit latency {latency:.1f} s (p95 {stats['latency_p95_s']:.1f} s)"
        if latency is not None
        else "commit latency: nothing committed yet"
    )
    if stats.get("target_passes"):
        status.append(f"target passes {stats['target_passes']} (plain decoding {stats['plain_passes']})")
    return (
        f'<div class="asr-live" style="color:{TEXT_COLOUR}">'
        f'<div style="font-size:1.1rem;line-height:1.5;min-height:3rem;border:1px solid {BORDER_COLOUR};'
        f'border-radius:0.5rem;padding:0.5rem 0.7rem;background:{CARD_BACKGROUND}">'
        f'<span class="asr-live-committed">{html.escape(committed)}</span>'
        f'<span class="asr-live-tentative" title="tentative: may still change" '
        f'style="color:{MUTED_COLOUR};font-style:italic">{html.escape(tentative)}</span></div>'
        f'<div class="asr-live-status" style="font-size:0.8rem;color:{MUTED_COLOUR};margin-top:0.3rem">'
        f"{html.escape(' · '.join(status))}</div></div>"
    )


def live_figures_html(stats: dict[str, Any], duration_s: float, language: str, what_ran: str) -> str:
    """A finished live stream's figures as cards, like an upload's (`stats`: `LiveStats.to_dict()`)."""
    passes, plain = stats["target_passes"], stats["plain_passes"]
    accepted = stats["accepted_from_hypothesis"] + stats["accepted_from_draft"]
    latency = stats["latency_mean_s"]
    mean_update = stats["update_time_mean_s"] or 0.0
    cards = [
        _card(
            "commit latency",
            f"{latency:.1f} s" if latency is not None else "n/a",
            f"p95 {stats['latency_p95_s']:.1f} s" if latency is not None else "nothing committed",
        ),
        _card(
            "target passes vs plain",
            f"{passes / plain:.0%}" if plain else "n/a",
            f"{passes} of {plain} passes",
            DRAFT_COLOUR if plain and passes < plain else TEXT_COLOUR,
        ),
        _card(
            "accepted: previous text / draft",
            f"{stats['accepted_from_hypothesis']} / {stats['accepted_from_draft']}",
            f"{accepted} of {stats['tokens']} tokens",
        ),
        _card(
            "update time",
            f"{mean_update:.2f} s",
            f"max {stats['update_time_max_s']:.2f} s · {stats['lagging_updates']} lagging",
        ),
        _card("updates", str(stats["updates"]), f"{stats['revisions']} rewrote committed text"),
    ]
    return (
        f'<div class="asr-figures asr-live-figures" style="color:{TEXT_COLOUR}">'
        f'<div style="display:flex;flex-wrap:wrap;gap:0.5rem">{"".join(cards)}</div>'
        f'<div style="font-size:0.8rem;color:{MUTED_COLOUR};margin:0.4rem 0 0.6rem">'
        f"{html.escape(f'{duration_s:.1f} s of audio, language {language} · {what_ran}')}<br>"
        "every update decodes its audio exactly as the target alone would: the previous update's text and "
        "the draft only save target passes</div></div>"
    )
