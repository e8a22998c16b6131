"""`chatapp bench` reports as text: the terminal table and the README's Markdown table."""

from __future__ import annotations


def _interval(tui: dict) -> str:
    """The TUI ratio's basis, e.g. "median of 40 pairs, 95% interval 0.92 to 0.97" (reports from
    before the interval: the pair count alone)."""
    basis = f"median of {tui['pairs']} pairs"
    low_high = tui.get("tui_over_headless_ci95")
    return f"{basis}, 95% interval {low_high[0]:.2f} to {low_high[1]:.2f}" if low_high else basis


def llama_cpp_lines(report: dict, bold: str = "") -> list[str]:
    """What the report says of llama.cpp beside chatapp (`bold`: "**" in Markdown): the decode
    and first-token ratios of (a) over (l), and both processes' peak memory; or why it was not
    measured."""
    llama = report.get("llama_cpp")
    if not llama:
        return [f"llama.cpp: not measured ({report.get('llama_cpp_absent') or 'not in this report'})"]
    a, l = report["configs"]["a"], report["configs"]["l"]
    rss_a, rss_l = llama["chatapp_answering_peak_rss_mb"], llama["llama_peak_rss_mb"]
    return [
        f"(a)/(l), chatapp's default over llama.cpp {llama['version']} on the same GGUF file: decode "
        f"{bold}{llama['a_over_llama']:.2f}×{bold} ({a['tok_per_s']:.1f} vs {l['tok_per_s']:.1f} tok/s; target ≥ 2.0), "
        f"time to first token {bold}{llama['ttft_a_over_llama']:.2f}×{bold} ({a['ttft_ms']:.0f} vs {l['ttft_ms']:.0f} ms; "
        f"{llama['prompt_tokens']} prompt tokens; target ≤ 1.0)",
        f"peak RSS, one process each that loads the model and answers: chatapp {rss_a:.0f} MiB, llama.cpp "
        f"{rss_l:.0f} MiB ({bold}{rss_a / rss_l:.2f}×{bold})" if rss_l else "peak RSS of llama.cpp: not reported",
    ]


def format_report(report: dict) -> str:
    """The human-readable table."""
    lines = [
        f"chatapp bench: {report['model']} on {report['device']}, {report['tokens']} new tokens, "
        f"median of {report['runs']} runs",
        "",
        f"{'configuration':58} {'dtype':9} {'tok/s':>7} {'TTFT ms':>8} {'RSS MiB':>8}",
    ]
    for c in report["configs"].values():
        lines.append(f"{c['label']:58} {c['dtype']:9} {c['tok_per_s']:7.1f} {c['ttft_ms']:8.1f} {c['rss_mb']:8.0f}")
    r, m, t = report["ratios"], report["multi_turn"], report["tui"]
    lines += [
        "",
        f"(b)/(c) = {r['b_over_c']:.2f}   our loop with candidates vs model.generate (target >= 1.0)",
        f"(a)/(d) = {r['a_over_d']:.2f}   default configuration vs float32 generate (target >= 3.0)",
        f"turn 8 / turn 1 TTFT = {m['turn8_over_turn1']:.2f}  ({m['turn1_ttft_ms']:.0f} ms -> {m['turn8_ttft_ms']:.0f} ms; target <= 1.0)",
        f"TUI / headless = {t['tui_over_headless']:.2f}  ({_interval(t)}; {t['tok_per_s']:.1f} vs "
        f"{t['headless_tok_per_s']:.1f} tok/s; target >= 0.95)",
        f"warm start to a ready model = {report['warm_start']['tui_ready_s']:.1f} s in the TUI "
        f"(its prompt takes input after {report['warm_start']['tui_prompt_s']:.1f} s), "
        f"{report['warm_start']['ready_s']:.1f} s for the bare engine  (fresh process; target <= 3 s)",
        f"peak RSS {report['memory']['peak_rss_mb']:.0f} MiB",
        *llama_cpp_lines(report),
    ]
    return "\n".join(lines)


def format_markdown(report: dict) -> str:
    """The README's performance table, generated from a report."""
    m, r, machine = report["multi_turn"], report["ratios"], report["machine"]
    d = report["configs"]["d"]["tok_per_s"]
    lines = [
        f"{report['model']}, {report['tokens']} new tokens, median of {report['runs']} runs; "
        f"{machine['cpu']}, {machine['cores']} cores, torch {machine['torch']} ({machine['threads']} threads)"
        + (f", GPU {machine['cuda']}" if machine.get("cuda") else "") + ".",
        "",
        "| configuration | dtype | tok/s | × (d) | time to first token |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for c in report["configs"].values():
        lines.append(
            f"| {c['label']} | {c['dtype']} | {c['tok_per_s']:.1f} | {c['tok_per_s'] / d:.2f} | {c['ttft_ms']:.0f} ms |"
        )
    lines += [
        "",
        f"- (b)/(c) = **{r['b_over_c']:.2f}** (target ≥ 1.0); (a)/(d) = **{r['a_over_d']:.2f}** (target ≥ 3.0)",
        f"- time to first token, turn 8 / turn 1 = **{m['turn8_over_turn1']:.2f}** "
        f"({m['turn1_ttft_ms']:.0f} ms → {m['turn8_ttft_ms']:.0f} ms; target ≤ 1.0)",
        f"- the TUI's decode speed / the headless engine's (same engine, alternating) = "
        f"**{report['tui']['tui_over_headless']:.2f}** ({_interval(report['tui'])}; target ≥ 0.95)",
        f"- warm start, from a fresh process to a model ready to answer = **{report['warm_start']['tui_ready_s']:.1f} s** "
        f"in the TUI (headless; its prompt is on screen and takes a message after "
        f"{report['warm_start']['tui_prompt_s']:.1f} s), {report['warm_start']['ready_s']:.1f} s for the bare engine "
        f"(target ≤ 3 s)",
        f"- peak RSS {report['memory']['peak_rss_mb']:.0f} MiB (all four configurations loaded in one process)",
        *(f"- {line}" for line in llama_cpp_lines(report, "**")),
    ]
    return "\n".join(lines)
