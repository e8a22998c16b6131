"""Widgets of the chat TUI: views of plain data (records, strings, numbers), never of torch."""
