"""A chat being had, without a UI: the conversation, the reply being written, and how it is kept.

- `chat_session`: `ChatSession`, the one owner of a chat's conversation, of its current reply
  job (and the one way to stop it) and of its autosave policy; a screen calls it and shows what
  it reports;
- `chat_engine`: `ChatEngine`, the protocol the engine and the tests' fake implement;
- `reply_stream`: one turn run on the engine thread, reported as plain events in batches.

Nothing here imports Textual: the TUI wraps the events in its own messages.

May import: `chatapp.storage`, `chatapp.chat` and `chatapp.support`, and the engine only through
the `ChatEngine` protocol (no torch).
"""
