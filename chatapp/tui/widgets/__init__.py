"""Widgets of the chat TUI: views of plain data (records, strings, numbers), never of torch.

May import: Textual, `chatapp.chat` and `chatapp.tui.formatting`; never torch, the engine, the
runtime or the loading code (a contract in pyproject.toml, run by tests/test_layers.py).
"""
