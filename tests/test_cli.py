"""`chatapp ask` from the shell: JSON Lines contract, plain streaming, and one-line errors; `--version`."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from chatapp.cli import main as cli

TOKEN_KEYS = {"type", "turn", "step", "token_id", "text", "prob", "raw_prob", "rank", "entropy", "top"}
TURN_KEYS = {
    "type", "turn", "text", "tokens", "prompt_tokens", "cached_tokens", "prefill_tokens",
    "dropped_turns", "ttft_ms", "tok_per_s", "finish_reason", "confidence",
}
MODEL_KEYS = {"type", "name", "device", "dtype", "context_length", "vocab_size", "mode", "weights", "notes"}


def chatapp(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "chatapp", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--temperature", "-1"], "temperature"),
        (["--temperature", "nan"], "temperature"),
        (["--top-p", "0"], "--top-p"),
        (["--top-p", "1.5"], "--top-p"),
        (["--min-p", "-0.1"], "--min-p"),
        (["--top-k", "-1"], "--top-k"),
        (["--repetition-penalty", "0"], "--repetition-penalty"),
        (["--max-new-tokens", "0"], "--max-new-tokens"),
        (["--seed", "-5"], "--seed"),
        (["--top", "0"], "--top"),
        (["--dtype", "int3"], "--dtype"),
        (["--device", "quantum"], "device"),
        (["--temperature", "warm"], "--temperature"),
        (["--system", "  "], "--system"),
        (["--no-such-flag"], "unrecognized"),
    ],
)
def test_bad_flags_exit_2_with_one_line(args, needle):
    result = chatapp("ask", *args, "hello", timeout=60)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert needle in lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_ask_needs_a_prompt():
    result = chatapp("ask", timeout=60)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1


def test_version_prints_the_one_version_without_importing_torch():
    from chatapp import __version__

    result = chatapp("--version", timeout=60)
    assert result.returncode == 0 and result.stdout == f"chatapp {__version__}\n", result
    code = "import sys, chatapp; print(sorted({'torch', 'transformers', 'textual'} & set(sys.modules)))"
    imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert imported.strip() == "[]", "importing chatapp must stay cheap"


def test_pyproject_reads_the_version_from_the_package():
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "chatapp.__version__"}


@pytest.mark.parametrize(
    "model,needle",
    [
        ("/no/such/model", "not found"),
        ("/no/such/file.gguf", "no GGUF file"),
        ("nobody/not-a-cached-model", "could not load model"),
    ],
)
def test_missing_model_exits_2_with_one_line(model, needle):
    result = chatapp("ask", "--model", model, "hello", timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr


def test_broken_model_folder_exits_2_with_one_line(tmp_path):
    (tmp_path / "config.json").write_text("{ this is not json")
    result = chatapp("ask", "--model", str(tmp_path), "hello", timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "could not load model" in lines[0], result.stderr


@pytest.mark.model
def test_ask_json_lines_contract():
    result = chatapp(
        "ask", "--json", "--temperature", "0", "--max-new-tokens", "12", "--top", "4",
        "What is 2+2?", "And 3+3?",
    )
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert set(records[0]) == MODEL_KEYS and records[0]["type"] == "model"
    assert records[0]["name"] == "SmolLM2-135M-Instruct" and records[0]["vocab_size"] == 49152
    assert records[0]["mode"] == "chat"
    turns = [r for r in records if r["type"] == "turn"]
    tokens = [r for r in records if r["type"] == "token"]
    assert [t["turn"] for t in turns] == [1, 2]
    for record in tokens:
        assert set(record) == TOKEN_KEYS
        assert len(record["top"]) == 4
        probs = [c["prob"] for c in record["top"]]
        assert probs == sorted(probs, reverse=True)
        assert set(record["top"][0]) == {"token_id", "text", "prob", "raw_prob"}
    for turn in turns:
        assert set(turn) == TURN_KEYS
        mine = [r for r in tokens if r["turn"] == turn["turn"]]
        assert turn["tokens"] == len(mine)
        assert turn["text"] == "".join(r["text"] for r in mine)
        assert turn["prefill_tokens"] == turn["prompt_tokens"] - turn["cached_tokens"]
        assert turn["finish_reason"] in {"stop", "length"}
        # Confidence: recomputed here from the token records' own raw probabilities.
        surprisals = [-math.log2(r["raw_prob"]) for r in mine]
        confidence = turn["confidence"]
        assert confidence["tokens"] == len(mine)
        assert confidence["mean_surprisal_bits"] == pytest.approx(sum(surprisals) / len(mine), rel=1e-12)
        assert confidence["perplexity"] == pytest.approx(2 ** confidence["mean_surprisal_bits"], rel=1e-12)
        least = sorted(mine, key=lambda r: r["raw_prob"])[:3]
        assert [t["step"] for t in confidence["least_likely"]] == [r["step"] for r in least]
    assert turns[1]["cached_tokens"] >= turns[0]["prompt_tokens"] + turns[0]["tokens"] - 1


@pytest.mark.model
def test_ask_plain_streams_text_and_same_seed_repeats():
    args = ("ask", "--seed", "7", "--temperature", "1.0", "--max-new-tokens", "16", "Tell me a joke.")
    first, second = chatapp(*args), chatapp(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() and first.stdout == second.stdout


def test_ctx_limits_the_context_window_and_is_checked():
    from chatapp.chat.records import ModelInfo
    from chatapp.engine.loader import limited_context
    from chatapp.support.errors import ModelLoadError

    info = ModelInfo(name="m", device="cpu", dtype="float32", context_length=8192, vocab_size=10)
    limited = limited_context(info, 1024)
    assert limited.context_length == 1024 and "context limited to 1024 tokens (--ctx)" in limited.notes
    with pytest.raises(ModelLoadError, match="more than m's context window of 8192"):
        limited_context(info, 9000)
    assert cli.build_parser().parse_args(["ask", "--ctx", "512", "hi"]).ctx == 512


def test_a_ctx_too_small_is_refused_in_one_line(capsys):
    assert cli.main(["--ctx", "10", "ask", "hi"]) == 2
    assert capsys.readouterr().err.strip() == "chatapp: error: --ctx must be at least 64 tokens, got 10"


@pytest.mark.model
def test_ask_with_ctx_drops_old_turns_to_fit_it():
    long_turn = "Tell me about the sea. " * 20
    done = subprocess.run([sys.executable, "-m", "chatapp", "ask", "--json", "--ctx", "200", "--max-new-tokens", "20",
                           "--temperature", "0", long_turn, long_turn], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert records[0]["context_length"] == 200
    turns = [r for r in records if r["type"] == "turn"]
    assert turns[1]["dropped_turns"] == 1 and turns[1]["prompt_tokens"] + 20 <= 200


@pytest.mark.model
def test_json_steps_count_from_1_as_the_panel_does():
    done = subprocess.run([sys.executable, "-m", "chatapp", "ask", "--json", "--max-new-tokens", "4", "--temperature",
                           "0", "Hi", "Again"], capture_output=True, text=True, timeout=300)
    tokens = [json.loads(line) for line in done.stdout.splitlines() if '"type": "token"' in line]
    for turn in (1, 2):
        assert [t["step"] for t in tokens if t["turn"] == turn] == [1, 2, 3, 4]


@pytest.mark.model
def test_ask_watch_adds_the_watched_tokens_numbers_to_every_step():
    result = chatapp(
        "ask", "--json", "--temperature", "0", "--max-new-tokens", "8", "--top", "10",
        "--watch", " Paris", "--watch", "The", "What is the capital of France? Answer in one word.",
    )
    assert result.returncode == 0, result.stderr
    tokens = [r for r in map(json.loads, result.stdout.splitlines()) if r["type"] == "token"]
    assert tokens
    for record in tokens:
        paris, the = record["watch"]
        assert (paris["text"], the["text"]) == (" Paris", "The") and paris["token_id"] != the["token_id"]
        for watched in (paris, the):
            assert watched["rank"] >= 1 and 0 < watched["raw_prob"] < 1
            if watched["token_id"] == record["token_id"]:  # the chosen token: the step's own numbers
                assert (watched["raw_prob"], watched["rank"]) == (record["raw_prob"], record["rank"])
            for candidate in record["top"]:  # listed: exactly the candidate's numbers
                if candidate["token_id"] == watched["token_id"]:
                    assert (watched["prob"], watched["raw_prob"]) == (candidate["prob"], candidate["raw_prob"])
    assert any(r["watch"][0]["rank"] > 10 for r in tokens)  # followed beyond the listed candidates


@pytest.mark.model
def test_ask_lens_adds_every_layer_s_top_token_and_its_last_is_the_step_s_own():
    result = chatapp("ask", "--json", "--lens", "--temperature", "0", "--max-new-tokens", "5", "The capital of France is",
                     "--raw")
    assert result.returncode == 0, result.stderr
    tokens = [r for r in map(json.loads, result.stdout.splitlines()) if r["type"] == "token"]
    assert len(tokens) == 5
    for record in tokens:
        lens = record["lens"]
        assert [entry["layer"] for entry in lens] == list(range(1, 31))  # SmolLM2-135M's 30 layers
        assert set(lens[0]) == {"layer", "token_id", "text", "prob"}
        # Greedy, no penalty: the step's top candidate is its raw best, the lens's last layer.
        assert (lens[-1]["token_id"], lens[-1]["prob"]) == (record["top"][0]["token_id"], record["top"][0]["raw_prob"])
    plain = chatapp("ask", "--lens", "hi")
    assert plain.returncode == 2 and plain.stderr.strip() == "chatapp: error: --lens needs --json: its layers go in " \
        "each token's JSON line"


def test_ask_watch_is_refused_in_one_line_unless_it_is_one_token_with_json():
    several = chatapp("ask", "--json", "--watch", "Parisian", "hi")
    assert several.returncode == 2 and several.stderr.strip().splitlines() == [
        "chatapp: error: --watch 'Parisian' is 2 tokens (Paris|ian), not one: look up a single token, "
        "e.g. its first piece"]
    plain = chatapp("ask", "--watch", " Paris", "hi")
    assert plain.returncode == 2 and "--watch needs --json" in plain.stderr


@pytest.mark.model
def test_a_watched_token_s_numbers_equal_a_recompute_at_that_step(default_model):
    import torch

    from chatapp.chat.settings import SamplingSettings
    from chatapp.engine.engine import Engine
    from chatapp.lm_head import lm_head

    messages = [{"role": "user", "content": "Name a city in France."}]
    settings = SamplingSettings(temperature=0.8, top_k=20, seed=3, max_new_tokens=6)
    engine = Engine(default_model)
    watched_id = default_model.tokenizer(" Lyon", add_special_tokens=False)["input_ids"][0]
    engine.watch((watched_id,))
    try:
        steps = list(engine.start_turn(messages, settings))
    finally:
        engine.watch(())  # the model is shared with other tests
    # Each step recomputed from the whole prefix, through a fresh cache (prefill, not the decode
    # step: the two paths round differently, hence the tolerance).
    fresh = Engine(default_model)
    for k, step in enumerate(steps):
        prefix = [s.token_id for s in steps[:k]]
        turn = fresh.start_turn(messages, settings, reply_prefix_ids=prefix)
        fresh.reset()
        ids = turn.prompt_ids
        hidden = fresh.decoder.prefill(ids)
        head = default_model.model.get_output_embeddings()
        head.always_exact = torch.tensor([watched_id])
        probs, logits = lm_head(default_model.model, hidden, settings.temperature, settings.top_k, return_logits=True)
        head.always_exact = None
        raw = torch.softmax(logits, -1)[watched_id].item()
        rank = int((logits > logits[watched_id]).sum()) + 1
        [watched] = step.watched
        assert watched.raw_prob == pytest.approx(raw, rel=2e-3) and abs(watched.rank - rank) <= 1
        assert watched.prob == pytest.approx(probs[watched_id].item(), abs=1e-6)
