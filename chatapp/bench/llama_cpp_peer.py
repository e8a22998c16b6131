"""llama.cpp beside chatapp in `chatapp bench`: the speed peer on the same GGUF file, same run.

llama.cpp's Python binding lives in a virtual environment of its own (built by the project's
`install-llama-cpp.sh`; its default place is `DEFAULT_PEER_VENV`, `CHATAPP_LLAMA_CPP_PYTHON`
names another interpreter). When it is there and the benchmarked model is a GGUF file, the bench
starts `llama_cpp_worker.py` in that interpreter once and asks it for one reply per run, in
alternation with chatapp's own runs, with the same prompt tokens (chatapp's templated prompt),
the same number of new tokens, temperature and top-k, and the same thread count.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from chatapp.support.openmp import peer_environment

PEER_PYTHON_VARIABLE = "CHATAPP_LLAMA_CPP_PYTHON"
"""Environment variable naming the Python that has llama.cpp's binding (`llama_cpp`)."""
DEFAULT_PEER_VENV = Path("~/.cache/chatapp-peers/llama-cpp").expanduser()
"""Where the project's install script builds llama.cpp's binding by default."""
WORKER = Path(__file__).with_name("llama_cpp_worker.py")
"""The script run in the peer's interpreter."""
PEER_CONTEXT = 4096
"""llama.cpp's context window in the bench: room for the bench's prompt and replies."""
IMPORT_CHECK_TIMEOUT_S = 60
"""Longest wait for the peer's interpreter to say whether it has the binding."""


def peer_python() -> Path | None:
    """The Python with llama.cpp's binding, or None when there is none (the bench then measures
    chatapp alone)."""
    named = os.environ.get(PEER_PYTHON_VARIABLE)
    python = Path(named).expanduser() if named else DEFAULT_PEER_VENV / "bin" / "python"
    if not python.is_file():
        return None
    try:
        found = subprocess.run([str(python), "-c", "import llama_cpp"], capture_output=True,
                               timeout=IMPORT_CHECK_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return python if found.returncode == 0 else None


@dataclass(frozen=True)
class PeerRun:
    """One reply measured by llama.cpp."""

    tok_per_s: float
    """Decode tokens/s after the first new token."""
    ttft_ms: float
    """Time to the first new token, the prompt read from scratch."""
    tokens: int
    """New tokens written."""


class LlamaCpp:
    """llama.cpp's worker on one GGUF file, answering one measured reply per `run`."""

    def __init__(self, python: Path, gguf: Path, threads: int) -> None:
        """Start the worker and wait until its model is loaded.

        Raises:
            RuntimeError: the worker could not load the file (its last error line says why).
        """
        self._process = subprocess.Popen(
            [str(python), str(WORKER), str(gguf), "--threads", str(threads), "--n-ctx", str(PEER_CONTEXT)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=peer_environment())
        hello = self._answer()
        self.version = hello["version"]
        """llama-cpp-python's version."""
        self.peak_rss_mib: float | None = None
        """The worker's peak resident memory, once closed."""

    def _answer(self) -> dict:
        line = self._process.stdout.readline()
        if not line:
            self._process.wait()
            lines = self._process.stderr.read().strip().splitlines()
            raise RuntimeError(f"llama.cpp's worker ended: {lines[-1] if lines else 'no message'}")
        return json.loads(line)

    def run(self, prompt_ids: list[int], tokens: int, temperature: float, top_k: int) -> PeerRun:
        """One reply to `prompt_ids` of at most `tokens` new tokens, measured."""
        request = {"prompt_ids": prompt_ids, "tokens": tokens, "temperature": temperature, "top_k": top_k}
        self._process.stdin.write(json.dumps(request) + "\n")
        self._process.stdin.flush()
        answer = self._answer()
        return PeerRun(answer["tok_per_s"], answer["ttft_ms"], answer["tokens"])

    def close(self) -> None:
        """End the worker, keeping its peak RSS."""
        if self._process.poll() is None:
            self._process.stdin.close()
            try:
                self.peak_rss_mib = self._answer()["peak_rss_mib"]
            except (RuntimeError, ValueError, KeyError):
                pass
            self._process.wait()

    def __enter__(self) -> "LlamaCpp":
        return self

    def __exit__(self, *exc) -> None:
        if self._process.poll() is None and exc[0] is not None:
            self._process.kill()
        self.close()
