"""Plain-text helpers for showing tokens and probabilities literally and readably.

No Textual here: these functions return strings, so every view (panel, token view, status)
formats the same way and the tests check them directly.
"""

from __future__ import annotations

import math

VISIBLE_WHITESPACE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}
"""Glyphs that make whitespace in a token visible in the candidates panel."""
CONTROL_PICTURES_BASE = 0x2400
"""Unicode "Control Pictures" block: U+2400 + code shows a C0 control character literally."""
DELETE_PICTURE = "␡"
"""Visible stand-in for DEL (0x7f)."""
REPLACEMENT_CHAR = "\ufffd"
"""What a lone token decodes to when it holds only part of a UTF-8 character."""
BAR_BLOCKS = " ▏▎▍▌▋▊▉█"
"""Eighth-block glyphs for sub-cell precision in probability bars."""
PERCENT_DECIMALS_FROM = 1.0
"""Percentages at or above this are shown with one decimal; smaller ones with 2 significant digits."""
PERCENT_CHARS = 8
"""Longest string `format_percent` returns ("100.0%", "0.00043%", "2.1e-05%", "1e-298%")."""
HEAT_STOPS = ((0.0, (190, 40, 40)), (0.3, (200, 140, 0)), (0.7, (70, 150, 60)), (1.0, (40, 110, 160)))
"""Heatmap colour stops (probability, RGB): unlikely tokens red, likely ones green-blue."""

PREVIEW_CHARS = 40
"""Longest preview of a message in a question or a notice."""

def _control_picture(char: str) -> str:
    code = ord(char)
    if code < 0x20:
        return chr(CONTROL_PICTURES_BASE + code)
    if code == 0x7F:
        return DELETE_PICTURE
    return char


def literal_text(text: str) -> str:
    """Text safe to show as is: control characters (ANSI escapes included) become visible glyphs.

    Newlines and tabs are kept, so replies keep their layout.
    """
    return "".join(ch if ch in "\n\t" else _control_picture(ch) for ch in text)


def visible_token(text: str) -> str:
    """A token's text with whitespace and control characters made visible (`␣`, `↵`, `␛`)."""
    return "".join(VISIBLE_WHITESPACE.get(ch) or _control_picture(ch) for ch in text)


def is_partial(text: str) -> bool:
    """True when the token holds only part of a character (it decodes to U+FFFD)."""
    return REPLACEMENT_CHAR in text


def token_label(text: str, piece: bytes) -> str:
    """The panel's label for a token: visible text, plus its bytes when it is a partial character."""
    if is_partial(text) and piece:
        shown = visible_token(text.replace(REPLACEMENT_CHAR, ""))
        return f"{shown}<{piece.hex(' ')}>"
    return visible_token(text) or "∅"


def format_percent(prob: float) -> str:
    """A probability as a percentage that stays readable when small: never "0.00%".

    Examples: 0.875 -> "87.5%", 0.0035 -> "0.35%", 2.1e-7 -> "2.1e-05%", 0 -> "0%". At most
    `PERCENT_CHARS` long.
    """
    if prob <= 0 or not math.isfinite(prob):
        return "0%"
    pct = prob * 100
    if pct >= PERCENT_DECIMALS_FROM:
        return f"{pct:.1f}%"
    text = f"{pct:.2g}%"
    return text if len(text) <= PERCENT_CHARS else f"{pct:.0e}%"  # a 3-digit exponent


def prob_bar(prob: float, width: int) -> str:
    """A horizontal bar `width` cells wide, filled in eighths of a cell."""
    eighths = round(max(0.0, min(1.0, prob)) * width * 8)
    full, rest = divmod(eighths, 8)
    bar = "█" * full + (BAR_BLOCKS[rest] if rest else "")
    return bar.ljust(width)


def heat_color(prob: float) -> str:
    """Background colour for a token in the heatmap, as an `rgb(r,g,b)` string."""
    p = max(0.0, min(1.0, prob))
    for (low, low_rgb), (high, high_rgb) in zip(HEAT_STOPS, HEAT_STOPS[1:]):
        if p <= high:
            t = (p - low) / (high - low)
            r, g, b = (round(a + (c - a) * t) for a, c in zip(low_rgb, high_rgb))
            return f"rgb({r},{g},{b})"
    r, g, b = HEAT_STOPS[-1][1]
    return f"rgb({r},{g},{b})"


def dropped_turns_message(dropped: int, context_length: int) -> str:
    """What to say when the oldest turns were left out to fit the context window."""
    turns = "turn was" if dropped == 1 else "turns were"
    return (
        f"The {dropped} oldest {turns} left out so the conversation fits the model's "
        f"{context_length}-token context window (the system prompt is kept)."
    )


def one_line_preview(text: str, width: int = PREVIEW_CHARS) -> str:
    """The start of `text` on one line (its first non-empty line, control characters made
    visible), cut to `width` characters with "…" when there is more."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = literal_text(lines[0]) if lines else ""
    more = len(lines) > 1 or len(first) > width
    return first[: width - 1] + "…" if more and len(first) >= width else first + ("…" if more else "")
