"""What is kept on disk of chats: the history database, chat files and exports.

- `store` (with `history_file`, `history_search`, `history_listing`): the SQLite history;
- `chat_file` (with `token_columns`): a chat as one JSON document, every step included;
- `export`: Markdown and JSON exports;
- `open_chats`: which chats an app has open, and the chat open at the last quit.

May import: `chatapp.chat` and `chatapp.support`; never the runtime, the engine or a UI.
"""
