"""The command line: `chatapp` (the TUI), `ask`, `bench`, `list`, `export` and `config`.

- `main`: `main()`, the entry point;
- `parser`: the flags; `config`: defaults from `config.toml`; `log_file`: `--log-file`;
- `preflight`: what is checked before anything loads;
- `ask`: the headless chat.

May import: every other package.
"""
