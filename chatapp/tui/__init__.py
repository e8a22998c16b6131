"""The chat TUI: a conversation beside the candidates the LM head weighed at every step.

Layering: `app` builds the Textual application from injected settings and an engine loader;
`chat_screen` runs the engine on its own thread and turns its `Step` records into widget
updates; `widgets` are views of plain data (no torch); `state`, `commands` and `formatting`
are plain Python that the tests exercise without a terminal.
"""
