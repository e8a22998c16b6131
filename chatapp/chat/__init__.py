"""What a conversation is, as plain data: pure Python, no torch, no Textual, no files.

- `conversation`: the tree of a chat (exchanges, the versions of each reply, branches), the one
  model of a conversation that the TUI shows, storage saves, export writes and `ask` reports;
- `records`: the records the engine yields per token and per turn (`Step`, `Candidate`,
  `TurnStats`, `ModelInfo`);
- `settings`: sampling settings and their validation;
- `prompt`: a conversation rendered with the model's chat template and fitted into its window;
- `commands` and `export_format`: the slash-command language and the export formats it names.

May import: the standard library and `chatapp.support` only.
"""
