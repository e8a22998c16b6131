"""The layers the folders show, enforced: the import-linter contracts in pyproject.toml.

`[tool.importlinter]` says which package may import which (cli > bench > tui > session > engine | storage >
loading > runtime | lm_head > chat > support), that the domain imports no UI, that storage and
the conversation model import no runtime, that the session knows the engine only by its
protocol, that widgets import no torch, and that the modules of a package import each other
without cycles (imports under `if TYPE_CHECKING:`, annotations only, are not counted). The second test breaks a copy of the package in
each of those ways and checks that the contracts say so, so the first cannot pass vacuously.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """Run import-linter on the `chatapp` package under `root` with `root`'s pyproject.toml."""
    code = "from importlinter.cli import lint_imports_command; lint_imports_command()"
    command = [sys.executable, "-c", code, "--config", "pyproject.toml", "--no-cache"]
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)


def test_the_import_contracts_hold():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BROKEN" not in result.stdout
    assert result.stdout.count("KEPT") == 6


def test_the_contracts_catch_each_kind_of_breach(tmp_path):
    shutil.copytree(ROOT / "chatapp", tmp_path / "chatapp", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    breaches = {
        "chatapp/chat/settings.py": "import textual.widget",  # the domain imports the UI
        "chatapp/storage/export.py": "import chatapp.runtime.quantize",  # storage imports the runtime
        "chatapp/tui/widgets/key_bar.py": "import torch",  # a widget imports torch
        "chatapp/runtime/quantize.py": "import chatapp.engine.engine",  # a lower layer imports a higher
        "chatapp/runtime/devices.py": "import chatapp.runtime.llama_decoder",  # a cycle in runtime/
        "chatapp/session/chat_session.py": "import chatapp.engine.engine",  # the session imports torch
    }
    for name, line in breaches.items():
        path = tmp_path / name
        path.write_text(path.read_text() + f"\n{line}  # noqa\n")

    result = lint_imports(tmp_path)

    assert result.returncode == 1
    assert result.stdout.count("BROKEN") == 6, result.stdout
    assert "chatapp.chat.settings -> textual" in result.stdout
    assert "chatapp.storage.export -> chatapp.runtime.quantize" in result.stdout
    assert "chatapp.tui.widgets.key_bar -> torch" in result.stdout
    assert "chatapp.runtime.quantize -> chatapp.engine.engine" in result.stdout
    assert "chatapp.session.chat_session -> chatapp.engine.engine" in result.stdout
    assert "runtime" in result.stdout.split("No import cycles")[-1]
