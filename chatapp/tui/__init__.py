"""The chat TUI: a conversation beside the candidates the LM head weighed at every step.

Layering: `app` builds the Textual application from injected settings and an engine loader;
`chat_screen` shows a `chatapp.session.ChatSession` (the chat, the reply being written) and
turns its events into widget updates; `widgets` are views of plain data (no torch);
`formatting` is plain text the tests exercise without a terminal.

May import: every package but `chatapp.cli` and `chatapp.bench`; widgets import no torch.
"""
