"""What the status line says, as a pure function of the session: `status_data`.

While a reply is written the line follows it (a long prompt's reading, then the reply's own
speed, tokens and context); otherwise it shows the last finished turn. The runtime's own news
(a kernel compiling) and a model being switched to are added to the activity.
"""

from __future__ import annotations

from chatapp.session.chat_session import ChatSession
from chatapp.storage.chat_file import counted
from chatapp.tui.formatting import one_line_preview
from chatapp.tui.widgets.status_bar import StatusData

SYSTEM_PREVIEW_CHARS = 24
"""How much of the system prompt the status line shows."""


def reply_activity(session: ChatSession) -> str:
    """What the reply being written is doing: a long prompt's reading (tokens read of all),
    then its tokens (and, after a long prompt, how long the first one took); "" when idle."""
    live, read = session.live, session.prompt_read
    if live is not None:
        first = f" · first token after {live.ttft_ms / 1000:.1f} s" if read is not None and live.ttft_ms else ""
        return f"writing… {counted(len(session.version.steps), 'token')}{first}"
    if read is not None:
        return f"reading the prompt… {read.done:,}/{read.total:,} tokens"
    return "writing…" if session.generating else ""


def status_data(session: ChatSession, activity: str | None = None, switching: str | None = None) -> StatusData:
    """The status line of `session`; `activity` replaces what the reply is doing (e.g. while
    loading), `switching` names a model being loaded to switch to."""
    finished = session.conversation.last_finished()
    stats = finished.stats if finished else None
    live, version, read = session.live, session.version, session.prompt_read
    if activity is None:
        runtime = getattr(session.engine, "activity", None)  # e.g. the int4 kernel being compiled
        loading = f"loading {switching}…" if switching else ""
        activity = " · ".join(filter(None, [reply_activity(session), loading, runtime]))
    if live is not None:  # the reply being written, not the last finished one
        speed, prompt, cached, steps = live.tok_per_s, live.prompt_tokens, live.cached_tokens, version.steps
    elif read is not None:  # a long prompt being read: the context it fills
        speed, prompt, cached, steps = None, read.prompt_tokens, read.prompt_tokens - read.total, []
    elif stats is not None:
        speed, prompt, cached, steps = stats.tok_per_s, stats.prompt_tokens, stats.cached_tokens, finished.steps
    else:
        speed, prompt, cached, steps = None, 0, None, []
    return StatusData(
        info=getattr(session.engine, "info", None),
        activity=activity,
        tok_per_s=speed,
        # A branch's forced prefix is in the reply's steps but not in stats.tokens.
        context_used=prompt + len(steps) if prompt else 0,
        cached=cached,
        prompt=prompt,
        settings=session.settings.describe(),
        system=one_line_preview(session.conversation.system or "", SYSTEM_PREVIEW_CHARS),
        warning=session.keeper.warning(),
    )
