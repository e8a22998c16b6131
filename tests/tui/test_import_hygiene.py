"""The domain never imports Textual; the widgets never import torch (checked in fresh processes)."""

from __future__ import annotations

import subprocess
import sys

import pytest

DOMAIN_MODULES = (
    "chatapp.lm_head", "chatapp.engine.engine", "chatapp.engine.detokenizer",
    "chatapp.runtime.decoder_choice", "chatapp.runtime.devices", "chatapp.runtime.quantize",
    "chatapp.runtime.llama_decoder", "chatapp.loading.models", "chatapp.loading.gguf_files",
    "chatapp.loading.int4_file_cache", "chatapp.chat.prompt", "chatapp.chat.settings",
    "chatapp.chat.records", "chatapp.support.errors", "chatapp.support.memory",
    "chatapp.storage.chat_file", "chatapp.storage.store", "chatapp.storage.export",
    "chatapp.cli.ask", "chatapp.cli.config", "chatapp.bench.runner", "chatapp.bench.report",
    "chatapp.bench.stats",
)
"""Modules below the UI: they must work without Textual."""
VIEW_MODULES = (
    "chatapp.tui.widgets.topk_panel", "chatapp.tui.widgets.token_view", "chatapp.tui.widgets.chat_log",
    "chatapp.tui.widgets.messages_view", "chatapp.tui.widgets.prompt_input",
    "chatapp.tui.widgets.status_bar", "chatapp.tui.widgets.loading_panel", "chatapp.tui.formatting",
    "chatapp.chat.conversation", "chatapp.chat.commands", "chatapp.tui.app", "chatapp.tui.replies",
)
"""Views of plain data (and the app, which receives its engine by injection)."""


def imported_after(module: str) -> set[str]:
    code = f"import sys, {module}; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return {name.split(".")[0] for name in out.split()}


@pytest.mark.parametrize("module", DOMAIN_MODULES)
def test_domain_does_not_import_textual(module):
    assert not {"textual", "rich"} & imported_after(module)


@pytest.mark.parametrize("module", VIEW_MODULES)
def test_views_do_not_import_torch(module):
    assert "torch" not in imported_after(module)


def test_the_tui_starts_before_torch_is_imported():
    # Importing torch takes seconds; the prompt must be on screen first (loading imports it later).
    code = (
        "import sys, chatapp.tui.app as app\n"
        "app.run_tui = lambda **options: print('torch' in sys.modules) or 0\n"
        "import chatapp.cli.main; chatapp.cli.main.terminal_problem = lambda: None\n"  # no terminal under pytest
        "from chatapp.cli.main import main\n"
        "main([])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
