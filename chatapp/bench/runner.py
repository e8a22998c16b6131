"""`chatapp bench`: chatapp's speed and memory as ratios against `model.generate`, in one run.

Configurations, measured in alternation so that machine noise hits all of them alike:
  (a) chatapp's engine in its default configuration, with the candidate records on;
  (b) the engine at the same dtype as (c);
  (c) `model.generate` with the same model, dtype, prompt and sampling settings, eager;
  (d) `model.generate` in float32, eager (what straightforward transformers code gets);
  (l) llama.cpp on the same GGUF file, when its Python binding is installed
      (`chatapp.bench.llama_cpp_peer`): the same prompt tokens, new tokens, temperature, top-k and
      threads, in a process of its own, with the peak RSS of that process against chatapp's own
      in a fresh process that answers once.
Plus a multi-turn engine run that reports time to first token of turn 1 and turn 8.
Figures are medians over the runs.
"""

from __future__ import annotations

import gc
import json
import statistics
import sys
import time
from dataclasses import dataclass, field

from chatapp.bench.llama_cpp_peer import LlamaCpp, peer_python
from chatapp.bench.report import format_markdown, format_report
from chatapp.bench.stats import median_interval
from chatapp.bench.warm_start import answering_peak_rss_mib, warm_starts
from chatapp.chat.settings import SamplingSettings
from chatapp.engine.engine import Engine
from chatapp.loading.model_specs import gguf_file_of
from chatapp.loading.models import LoadedModel, load_model
from chatapp.runtime import int4_kernel
from chatapp.support.memory import current_rss_mb, peak_rss_mb

BENCH_PROMPT = "Write a long story about a lighthouse keeper who befriends a storm."
"""A prompt the default model answers at length, so every run decodes the full budget."""
DEFAULT_TOKENS = 128
"""New tokens per measured run."""
DEFAULT_RUNS = 3
"""Runs per configuration; medians are reported."""
MULTI_TURN_PROMPTS = [
    "Hi! Let's talk about the sea.", "What lives in it?", "Which is the largest?", "How big is it?",
    "What does it eat?", "Where does it travel?", "Is it endangered?", "How can people help?",
]
"""Eight short user turns for the KV-cache run."""
MULTI_TURN_TOKENS = 48
"""New tokens per turn in the multi-turn run."""
BENCH_SEED = 1234
"""Fixed sampling seed for the engine runs."""
MIN_TUI_PAIRS = 40
"""Fewest (TUI, headless) pairs behind the TUI ratio. Each pair is two 1.5-3 s runs on a machine
whose speed swings from one run to the next: single pairs' ratios had a standard deviation of
0.12-0.15 in runs of 30 and 40, from 0.63 to 1.31. The report gives the median's 95% interval
(ranks 14 to 27 of 40 sorted ratios): about +-0.05 on this machine. Two earlier benches of 11
and 22 pairs, without an interval, landed at 0.87 and 0.88, where runs of 40-44 pairs gave 0.94."""


@dataclass
class RunFigures:
    """One configuration's medians."""

    label: str
    """Which configuration, e.g. "(a) chatapp default"."""
    dtype: str
    """Weights dtype."""
    tok_per_s: list[float] = field(default_factory=list)
    """Decode tokens/s of each run (after the first token)."""
    ttft_ms: list[float] = field(default_factory=list)
    """Time to the first new token of each run."""
    tokens: list[int] = field(default_factory=list)
    """New tokens of each run."""
    rss_mb: float = 0.0
    """Resident memory after the runs."""

    def summary(self) -> dict:
        """Medians, for printing and JSON."""
        return {
            "label": self.label,
            "dtype": self.dtype,
            "tok_per_s": statistics.median(self.tok_per_s),
            "ttft_ms": statistics.median(self.ttft_ms),
            "tokens": statistics.median(self.tokens),
            "rss_mb": round(self.rss_mb, 1),
            "runs": len(self.tok_per_s),
        }


def _messages() -> list[dict]:
    return [{"role": "user", "content": BENCH_PROMPT}]


def _run_engine(engine: Engine, settings: SamplingSettings, figures: RunFigures) -> None:
    engine.reset()  # every run prefills the prompt, as generate does
    turn = engine.start_turn(_messages(), settings)
    for _ in turn:
        pass
    figures.tok_per_s.append(turn.stats.tok_per_s)
    figures.ttft_ms.append(turn.stats.ttft_ms)
    figures.tokens.append(turn.stats.tokens)


class _Clock:
    """A generate() streamer that timestamps each new token."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value) -> None:
        if not self._prompt_seen:  # generate first "streams" the prompt itself
            self._prompt_seen = True
            return
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def _run_generate(loaded: LoadedModel, settings: SamplingSettings, tokens: int, figures: RunFigures) -> None:
    import torch

    tokenizer = loaded.tokenizer
    inputs = tokenizer.apply_chat_template(
        _messages(), add_generation_prompt=True, return_tensors="pt", return_dict=True
    ).to(loaded.model.device)
    torch.manual_seed(BENCH_SEED)
    clock = _Clock()
    with torch.inference_mode():
        loaded.model.generate(
            **inputs,
            do_sample=settings.temperature > 0,
            temperature=settings.temperature or None,
            top_k=settings.top_k,
            max_new_tokens=tokens,
            pad_token_id=tokenizer.eos_token_id,
            streamer=clock,
        )
    n = len(clock.times)
    figures.ttft_ms.append((clock.times[0] - clock.start) * 1000.0)
    figures.tok_per_s.append((n - 1) / (clock.times[-1] - clock.times[0]) if n > 1 else 0.0)
    figures.tokens.append(n)


def _run_peer(peer: LlamaCpp, prompt_ids: list[int], settings: SamplingSettings, figures: RunFigures) -> None:
    run = peer.run(prompt_ids, settings.max_new_tokens, settings.temperature, settings.top_k)
    figures.tok_per_s.append(run.tok_per_s)
    figures.ttft_ms.append(run.ttft_ms)
    figures.tokens.append(run.tokens)


def _start_peer(model: str, device: str | None, progress) -> tuple[LlamaCpp | None, str]:
    """llama.cpp's worker on `model`'s GGUF file, or None and why it does not run beside."""
    import torch

    gguf = gguf_file_of(model)
    if gguf is None:
        return None, "not a GGUF file"
    if device not in (None, "cpu"):
        return None, "the bench runs llama.cpp's CPU build only"
    python = peer_python()
    if python is None:
        return None, "llama.cpp's Python binding is not installed (install-llama-cpp.sh)"
    progress(f"starting llama.cpp on {gguf.name}")
    try:
        return LlamaCpp(python, gguf, torch.get_num_threads()), ""
    except RuntimeError as error:
        return None, str(error)


def _multi_turn(engine: Engine, tokens: int) -> list[float]:
    """Time to first token of each of eight turns of one conversation."""
    engine.reset()
    settings = SamplingSettings(seed=BENCH_SEED, max_new_tokens=tokens)
    messages: list[dict] = []
    ttfts = []
    for prompt in MULTI_TURN_PROMPTS:
        messages.append({"role": "user", "content": prompt})
        turn = engine.start_turn(messages, settings)
        for _ in turn:
            pass
        ttfts.append(turn.stats.ttft_ms)
        messages.append({"role": "assistant", "content": turn.stats.text})
    return ttfts


def run_bench(model: str, device: str | None, tokens: int, runs: int, progress=None) -> dict:
    """Measure every configuration; return the JSON-ready report."""
    progress = progress or (lambda message: None)
    settings = SamplingSettings(seed=BENCH_SEED, max_new_tokens=tokens)
    rss_start = current_rss_mb()
    if not int4_kernel.built() and int4_kernel.wanted() is None:
        progress("building chatapp's int4 kernel (once per machine and torch version)")
    int4_kernel.load()  # so every process below, warm starts included, finds it built
    progress("warm starts (a fresh process each, until the engine is ready)")
    starts, tui_starts, prompt_starts = warm_starts(model, device, runs)  # first, while this process holds no model
    progress("TUI runs (a fresh process: the app's engine driven through the headless TUI and bare)")
    from chatapp.bench.tui_speed import tui_and_headless_in_fresh_process

    tui_pairs = tui_and_headless_in_fresh_process(model, device, BENCH_PROMPT, settings, max(runs, MIN_TUI_PAIRS))
    progress("loading the default configuration")
    default = load_model(model, device, "auto")
    default_engine = Engine(default)
    progress("loading plain weights for (b) and (c)")
    plain = load_model(model, device, default.info.dtype, quantize="none")
    progress("loading float32 weights for (d)")
    fp32 = plain if plain.info.dtype == "float32" else load_model(model, device, "float32", quantize="none")
    fast = ", ".join(note.split(" (")[0] for note in default.info.notes if note.startswith("int4"))
    configs = {
        "a": RunFigures("(a) chatapp, default configuration" + (f" ({fast})" if fast else ""), default.info.dtype),
        "b": RunFigures("(b) chatapp, same dtype as (c), unquantized", default.info.dtype),
        "c": RunFigures("(c) model.generate, same model/dtype/sampling, eager", default.info.dtype),
        "d": RunFigures("(d) model.generate, float32, eager", "float32"),
    }
    plain_engine = Engine(plain)  # our decoder, without int4
    peer, peer_absent = _start_peer(model, device, progress)
    prompt_ids = default_engine.start_turn(_messages(), settings).prompt_ids  # what (a) reads, for (l)
    if peer is not None:
        configs["l"] = RunFigures(f"(l) llama.cpp {peer.version}, same GGUF file, prompt tokens, sampling, threads",
                                  "gguf")
    try:
        # Warm-up: one short run each, so one-time costs don't land in the first measurement.
        warm = SamplingSettings(seed=BENCH_SEED, max_new_tokens=8)
        _run_engine(default_engine, warm, RunFigures("warm", ""))
        _run_engine(plain_engine, warm, RunFigures("warm", ""))
        _run_generate(plain, warm, 8, RunFigures("warm", ""))
        _run_generate(fp32, warm, 8, RunFigures("warm", ""))
        if peer is not None:
            _run_peer(peer, prompt_ids, warm, RunFigures("warm", ""))
        for run in range(runs):
            progress(f"run {run + 1}/{runs}")
            _run_engine(default_engine, settings, configs["a"])
            if peer is not None:  # right after (a): the pair meets the same machine
                _run_peer(peer, prompt_ids, settings, configs["l"])
            _run_engine(plain_engine, settings, configs["b"])
            _run_generate(plain, settings, tokens, configs["c"])
            _run_generate(fp32, settings, tokens, configs["d"])
            gc.collect()
    finally:
        if peer is not None:
            peer.close()
    for figures in configs.values():
        figures.rss_mb = current_rss_mb()
    if peer is not None:
        configs["l"].rss_mb = peer.peak_rss_mib or 0.0
    progress("multi-turn runs (8 turns each)")
    passes = [_multi_turn(default_engine, MULTI_TURN_TOKENS) for _ in range(runs)]
    ttfts = [statistics.median(turn) for turn in zip(*passes)]
    tui_ratios = [t / h for t, h in tui_pairs]
    s = {key: figures.summary() for key, figures in configs.items()}
    llama = None
    if peer is not None:
        progress("chatapp's peak RSS in a fresh process that answers once")
        answering_rss = answering_peak_rss_mib(model, device, BENCH_PROMPT, tokens)
        llama = {
            "version": peer.version,
            "a_over_llama": s["a"]["tok_per_s"] / s["l"]["tok_per_s"],
            "ttft_a_over_llama": s["a"]["ttft_ms"] / s["l"]["ttft_ms"],
            "pair_ratios": [a / l for a, l in zip(configs["a"].tok_per_s, configs["l"].tok_per_s)],
            "chatapp_answering_peak_rss_mb": round(answering_rss, 1),
            "llama_peak_rss_mb": round(peer.peak_rss_mib or 0.0, 1),
            "prompt_tokens": len(prompt_ids),
        }
    return {
        "type": "bench",
        "model": default.info.name,
        "device": default.info.device,
        "tokens": tokens,
        "runs": runs,
        "machine": _machine(),
        "default_notes": list(default.info.notes),
        "decoders": {"a": default_engine.decoder.kind, "b": plain_engine.decoder.kind},
        "int4_kernel": "loaded" if int4_kernel.loaded() else (int4_kernel.failure() or "not loaded"),
        "configs": s,
        "ratios": {
            "b_over_c": s["b"]["tok_per_s"] / s["c"]["tok_per_s"],
            "a_over_d": s["a"]["tok_per_s"] / s["d"]["tok_per_s"],
            "a_over_c": s["a"]["tok_per_s"] / s["c"]["tok_per_s"],
        },
        "tui": {
            "tok_per_s": statistics.median(t for t, _ in tui_pairs),
            "headless_tok_per_s": statistics.median(h for _, h in tui_pairs),
            "tui_over_headless": statistics.median(tui_ratios),
            "tui_over_headless_ci95": list(median_interval(tui_ratios)),
            "pairs": len(tui_pairs),
            "pair_ratios": tui_ratios,
        },
        "multi_turn": {
            "ttft_ms": ttfts,
            "turn1_ttft_ms": ttfts[0],
            "turn8_ttft_ms": ttfts[-1],
            "turn8_over_turn1": ttfts[-1] / ttfts[0],
        },
        "warm_start": {
            "ready_s": statistics.median(starts),
            "runs_s": starts,
            "tui_ready_s": statistics.median(tui_starts),
            "tui_runs_s": tui_starts,
            "tui_prompt_s": statistics.median(prompt_starts),
            "tui_prompt_runs_s": prompt_starts,
        },
        "memory": {"rss_start_mb": round(rss_start, 1), "peak_rss_mb": round(peak_rss_mb(), 1)},
        "llama_cpp": llama,
        "llama_cpp_absent": peer_absent or None,
    }


def _machine() -> dict:
    import os
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            names = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def main_bench(args) -> int:
    """Entry point of `chatapp bench`."""
    from chatapp.loading.models import ModelLoadError

    progress = None if args.json else (lambda message: print(f"… {message}", file=sys.stderr))
    try:
        report = run_bench(args.model, args.device, args.tokens, args.runs, progress)
    except ModelLoadError as error:
        print(f"chatapp: error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report))
    elif args.markdown:
        print(format_markdown(report))
    else:
        print(format_report(report))
    return 0
