"""Warm starts for `chatapp bench`: seconds from a fresh Python process to a model ready to answer
(and the peak memory of a fresh process that answers once, `answering_peak_rss_mib`).

Two children, alternating: the bare engine (imports, load, engine: what `chatapp ask` does before
it can answer) and the TUI, run headless with a fresh chat store until its model is ready (what
a user waits for before a message sent at once starts being answered). The TUI child also says
when its prompt is on screen and takes input (the model still loading behind it).
"""

from __future__ import annotations

import subprocess
import sys
import time

READY_LINE = "chatapp-bench-ready"
"""What the warm-start child prints once its engine can answer."""
PROMPT_LINE = "chatapp-bench-prompt"
"""What the TUI warm-start child prints once its prompt is on screen and focused."""
WARM_START_CODE = (
    "from chatapp.engine.loader import load_engine\n"
    "load_engine({model!r}, {device!r})\n"
    "print({ready!r}, flush=True)\n"
)
"""The warm-start child: exactly what the app does before it can answer (imports, load, engine)."""
TUI_WARM_START_CODE = (
    "import asyncio, sys, tempfile, time\n"
    "from chatapp.chat.settings import SamplingSettings\n"
    "from chatapp.tui.app import make_app\n"
    "failed = []\n"
    "def load(progress):\n"
    "    from chatapp.engine.loader import load_engine\n"
    "    try:\n"
    "        return load_engine({model!r}, {device!r}, progress=progress)\n"
    "    except BaseException:\n"
    "        failed.append(True)\n"
    "        raise\n"
    "async def main(store):\n"
    "    app = make_app(settings=SamplingSettings(), load_engine=load, store_path=store)\n"
    "    async with app.run_test(size=(120, 36)):\n"
    "        if app.focused is app.chat.query_one('PromptInput'):\n"
    "            print({prompt!r}, flush=True)\n"
    "        deadline = time.monotonic() + {timeout}\n"
    "        while app.chat.engine is None and not failed and time.monotonic() < deadline:\n"
    "            await asyncio.sleep(0.01)\n"
    "        if app.chat.engine is not None:\n"
    "            print({ready!r}, flush=True)\n"
    "with tempfile.TemporaryDirectory() as scratch:\n"
    "    asyncio.run(main(scratch + '/bench.sqlite3'))\n"
    "sys.exit(0 if not failed else 1)\n"
)
"""The TUI warm-start child: the app (headless, a fresh chat store) from start until its model
is ready, which is when a message sent at once would start being answered."""
WARM_START_TIMEOUT_S = 300
"""Give up on a warm-start child after this long."""


def _warm_start_times(model: str, device: str | None, template: str = WARM_START_CODE) -> dict[str, float]:
    """Seconds from starting a fresh Python process running `template` to each line it printed
    (`PROMPT_LINE`, `READY_LINE`), up to its ready line."""
    code = template.format(model=model, device=device, ready=READY_LINE, prompt=PROMPT_LINE, timeout=WARM_START_TIMEOUT_S)
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    seen: dict[str, float] = {}
    try:
        for line in child.stdout:
            seen[line.strip()] = time.perf_counter() - start
            if READY_LINE in seen:
                return seen
        status = child.wait(WARM_START_TIMEOUT_S)
        raise RuntimeError(f"the warm-start process never got its model ready (exit status {status})")
    finally:
        child.kill()
        child.wait()


def warm_starts(model: str, device: str | None, runs: int) -> tuple[list[float], list[float], list[float]]:
    """`runs` warm starts of the bare engine and of the TUI, alternating, after one that fills
    the file cache (and converts a GGUF file once): the engine's seconds to ready, the TUI's,
    and the TUI's seconds to its prompt."""
    _warm_start_times(model, device)
    engine, tui, prompt = [], [], []
    for _ in range(runs):
        engine.append(_warm_start_times(model, device)[READY_LINE])
        seen = _warm_start_times(model, device, TUI_WARM_START_CODE)
        if PROMPT_LINE not in seen:
            raise RuntimeError("the TUI warm-start process never showed a focused prompt")
        tui.append(seen[READY_LINE])
        prompt.append(seen[PROMPT_LINE])
    return engine, tui, prompt


ANSWERING_CODE = (
    "from chatapp.chat.settings import SamplingSettings\n"
    "from chatapp.engine.loader import load_engine\n"
    "from chatapp.support.memory import peak_rss_mb\n"
    "engine = load_engine({model!r}, {device!r})\n"
    "for _ in engine.start_turn([{{'role': 'user', 'content': {prompt!r}}}], SamplingSettings(max_new_tokens={tokens})):\n"
    "    pass\n"
    "print(peak_rss_mb(), flush=True)\n"
)
"""The answering child: the app's engine, one reply, then its peak RSS in MiB."""


def answering_peak_rss_mib(model: str, device: str | None, prompt: str, tokens: int) -> float:
    """Peak resident memory of a fresh process that loads the engine as the app does and writes
    one reply of `tokens` tokens to `prompt`: chatapp's memory as a user's process has it (the
    bench's own process holds four configurations at once)."""
    code = ANSWERING_CODE.format(model=model, device=device, prompt=prompt, tokens=tokens)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=WARM_START_TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f"the answering process failed (exit status {done.returncode})")
    return float(done.stdout.split()[-1])

