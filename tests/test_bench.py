"""`chatapp bench --json`: every figure the performance issue asks for is there (a smoke run)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from chatapp.bench.llama_cpp_peer import peer_python
from chatapp.runtime import int4_kernel


@pytest.mark.model
def test_bench_json_has_every_figure():
    result = subprocess.run(
        [sys.executable, "-m", "chatapp", "bench", "--json", "--tokens", "4", "--runs", "1"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    peer = peer_python()  # llama.cpp's binding, where install-llama-cpp.sh has built it
    assert set(report["configs"]) == {"a", "b", "c", "d"} | ({"l"} if peer else set())
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
    llama = report["llama_cpp"]
    if peer is None:
        assert llama is None and "not installed" in report["llama_cpp_absent"]
        return
    a, l = report["configs"]["a"]["tok_per_s"], report["configs"]["l"]["tok_per_s"]
    assert llama["a_over_llama"] == pytest.approx(a / l) and llama["pair_ratios"]
    assert llama["prompt_tokens"] > 20  # chatapp's templated prompt, read by both
    assert llama["llama_peak_rss_mb"] > 50 and llama["chatapp_answering_peak_rss_mb"] > 50


def test_bench_says_why_llama_cpp_is_not_beside(tmp_path):
    """Without llama.cpp's binding, or for a model that is not a GGUF file, the report says why."""
    from chatapp.bench.report import llama_cpp_lines
    from chatapp.bench.runner import _start_peer

    env_python = tmp_path / "python"  # not an interpreter with llama_cpp
    env_python.write_text("")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CHATAPP_LLAMA_CPP_PYTHON", str(env_python))
        peer, why = _start_peer("default", None, lambda message: None)
    assert peer is None and "not installed" in why
    assert _start_peer(str(tmp_path), None, lambda message: None) == (None, "not a GGUF file")
    assert llama_cpp_lines({"llama_cpp": None, "llama_cpp_absent": why}) == [f"llama.cpp: not measured ({why})"]


@pytest.mark.parametrize("args", [["--tokens", "1"], ["--runs", "0"], ["--json", "--markdown"]])
def test_bench_bad_flags_exit_2(args):
    result = subprocess.run([sys.executable, "-m", "chatapp", "bench", *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_child_s_peak_memory_is_its_own_not_its_parent_s():
    """`peak_rss_mb` in a process started by a large one (the bench's answering child, llama.cpp's
    worker) reports the child's own peak: `ru_maxrss` would report the parent's."""
    import resource

    ballast = bytearray(600 * 1024 * 1024)  # this process now holds 600 MiB more
    ballast[:: 4096] = b"x" * len(ballast[:: 4096])  # touched, so resident
    parent = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child = subprocess.run([sys.executable, "-c", "from chatapp.support.memory import peak_rss_mb; print(peak_rss_mb())"],
                           capture_output=True, text=True, timeout=60)
    del ballast
    assert parent > 600 and float(child.stdout) < 200, (parent, child.stdout)
