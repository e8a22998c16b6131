"""The domain never imports Textual; the widgets never import torch (checked in fresh processes)."""

from __future__ import annotations

import subprocess
import sys

import pytest

DOMAIN_MODULES = (
    "chatapp.engine", "chatapp.lm_head", "chatapp.decoding", "chatapp.detokenizer",
    "chatapp.conversation", "chatapp.loading", "chatapp.settings", "chatapp.records",
    "chatapp.devices", "chatapp.errors", "chatapp.gguf_files", "chatapp.memory", "chatapp.quantize", "chatapp.ask", "chatapp.bench",
    "chatapp.chat_file", "chatapp.store", "chatapp.export", "chatapp.config", "chatapp.bench_report", "chatapp.bench_stats",
    "chatapp.llama_decoder", "chatapp.int4_cache",
)
"""Modules below the UI: they must work without Textual."""
VIEW_MODULES = (
    "chatapp.tui.widgets.topk_panel", "chatapp.tui.widgets.token_view", "chatapp.tui.widgets.chat_log",
    "chatapp.tui.widgets.messages_view", "chatapp.tui.widgets.prompt_input", "chatapp.tui.widgets.status_bar",
    "chatapp.tui.widgets.loading_panel", "chatapp.tui.state", "chatapp.tui.formatting", "chatapp.tui.commands",
    "chatapp.tui.app", "chatapp.tui.replies",
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
        "import chatapp.cli; chatapp.cli.terminal_problem = lambda: None\n"  # no terminal under pytest
        "from chatapp.cli import main\n"
        "main([])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
