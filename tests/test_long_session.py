"""A real 50-turn session on the default model: memory stays flat beyond the KV cache itself."""

from __future__ import annotations

import gc
import os

import pytest

from chatapp.chat.settings import SamplingSettings
from chatapp.engine.engine import Engine
from chatapp.loading.models import load_model
from chatapp.support.memory import current_rss_mb

TURNS = 50
"""Turns in the session."""
REPLY_TOKENS = 16
"""Longest reply per turn, to keep the test short."""
WARMUP_TURNS = 3
"""Turns before the baseline, so one-time allocations (allocator pools, kernels) are excluded."""
SLACK_MB = 64.0
"""Allowed growth beyond the KV cache: allocator noise, token records, the transcript."""


def _kv_mb(engine: Engine) -> float:
    return engine.decoder.cache_bytes() / 2**20


@pytest.mark.model
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads RSS from /proc")
@pytest.mark.parametrize("configuration", ["float32", "default"])
def test_fifty_turns_keep_memory_flat_beyond_the_kv_cache(configuration, default_model, capsys):
    # "default": the app's own configuration (int4 weights, decode steps on chatapp's kernel where it runs)
    engine = Engine(default_model if configuration == "float32" else load_model("default"))
    settings = SamplingSettings(seed=7, max_new_tokens=REPLY_TOKENS)
    messages: list[dict] = []
    baseline = kv_baseline = 0.0
    for turn_number in range(TURNS):
        messages.append({"role": "user", "content": f"Tell me one fact about the number {turn_number}."})
        turn = engine.start_turn(messages, settings)
        steps = list(turn)
        messages.append({"role": "assistant", "content": turn.stats.text})
        assert steps and turn.stats.cached_tokens > 0 or turn_number == 0
        if turn_number + 1 == WARMUP_TURNS:
            gc.collect()
            baseline, kv_baseline = current_rss_mb(), _kv_mb(engine)
    gc.collect()
    growth, kv_growth = current_rss_mb() - baseline, _kv_mb(engine) - kv_baseline
    with capsys.disabled():
        print(f"\n{configuration}, {engine.decoder.kind}: {TURNS} turns: RSS +{growth:.1f} MiB after warm-up, KV cache +{kv_growth:.1f} MiB "
              f"({len(engine.decoder)} tokens cached)")
    assert growth <= kv_growth + SLACK_MB
