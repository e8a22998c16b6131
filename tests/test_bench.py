"""`chatapp bench --json`: every figure the performance issue asks for is there (a smoke run)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from chatapp.runtime import int4_kernel


@pytest.mark.model
def test_bench_json_has_every_figure():
    result = subprocess.run(
        [sys.executable, "-m", "chatapp", "bench", "--json", "--tokens", "4", "--runs", "1"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report["configs"]) == {"a", "b", "c", "d"}
    for figures in report["configs"].values():
        assert figures["tok_per_s"] > 0 and figures["ttft_ms"] > 0 and figures["tokens"] >= 2
    assert report["configs"]["d"]["dtype"] == "float32"
    kernel = ", int4 kernel" if int4_kernel.built() else ""  # (a) decodes on it wherever it can be built
    assert report["decoders"] == {"a": f"chatapp decoder (TorchScript){kernel}", "b": "chatapp decoder (TorchScript)"}
    assert report["int4_kernel"] == ("loaded" if kernel else int4_kernel.failure() or "not loaded")
    assert set(report["ratios"]) == {"b_over_c", "a_over_d", "a_over_c"}
    multi = report["multi_turn"]
    assert len(multi["ttft_ms"]) == 8 and multi["turn8_over_turn1"] > 0
    assert report["memory"]["peak_rss_mb"] > 0
    warm = report["warm_start"]
    assert len(warm["runs_s"]) == len(warm["tui_runs_s"]) == len(warm["tui_prompt_runs_s"]) == 1
    assert warm["tui_ready_s"] > 0.5 and warm["ready_s"] > 0.5
    assert 0 < warm["tui_prompt_s"] < warm["tui_ready_s"]  # the prompt comes first, the model loads behind it
    tui = report["tui"]  # the TUI's speed against the bare engine's, measured in the same run
    assert tui["tok_per_s"] > 0 and tui["headless_tok_per_s"] > 0 and tui["tui_over_headless"] > 0
    assert tui["pairs"] == len(tui["pair_ratios"]) >= 40
    low, high = tui["tui_over_headless_ci95"]
    assert low <= tui["tui_over_headless"] <= high and {low, high} <= set(tui["pair_ratios"])


@pytest.mark.parametrize("args", [["--tokens", "1"], ["--runs", "0"], ["--json", "--markdown"]])
def test_bench_bad_flags_exit_2(args):
    result = subprocess.run([sys.executable, "-m", "chatapp", "bench", *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
