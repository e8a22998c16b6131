"""The TUI tests' fixtures, for the fault tests that drive the app with Pilot."""

from tests.tui.conftest import anyio_backend, private_data_dir, store_path  # noqa: F401 - fixtures, found by name
