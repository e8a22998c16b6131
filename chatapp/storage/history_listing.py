"""`chatapp list`: the saved chats as lines of text or JSON, for people and for scripts.

Pure Python: no torch, no Textual.
"""

from __future__ import annotations

import json
from typing import Iterable, Iterator

from chatapp.storage.store import ChatSummary

ID_WIDTH = 8
"""Characters of an id in the text listing: a prefix `--chat` and `export` take."""
DATE_FORMAT = "%Y-%m-%d %H:%M"
"""How the text listing shows when a chat was last saved (local time)."""


def listing_lines(chats: Iterable[ChatSummary], as_json: bool = False) -> Iterator[str]:
    """One line per chat: `ID  UPDATED  TURNS  MODEL  TITLE` (a header first), or one JSON object
    each with the full id, ISO times (UTC), turns, model and title."""
    chats = list(chats)
    if as_json:
        for chat in chats:
            yield json.dumps({"id": chat.id, "title": chat.title, "model": chat.model, "turns": chat.turns,
                              "created": chat.created.isoformat(), "updated": chat.updated.isoformat()},
                             ensure_ascii=False)
        return
    model_width = max([len("MODEL")] + [len(chat.model) for chat in chats])
    yield f"{'ID':<{ID_WIDTH}}  {'UPDATED':<16}  TURNS  {'MODEL':<{model_width}}  TITLE"
    for chat in chats:
        title = " ".join(chat.title.split())  # one line, whatever the title holds
        yield (f"{chat.id[:ID_WIDTH]:<{ID_WIDTH}}  {chat.updated.astimezone().strftime(DATE_FORMAT):<16}  "
               f"{chat.turns:>5}  {chat.model:<{model_width}}  {title}")
