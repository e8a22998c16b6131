"""The app's loader: model, engine, and what the load left in memory kept out of the collector's way."""

from __future__ import annotations

import gc

from chatapp.chat.settings import SamplingSettings
from chatapp.engine.engine import Engine
from chatapp.engine.loader import load_engine
from tests.conftest import tiny_llama


def test_the_loaded_engine_is_frozen_out_of_collections_and_still_chats(tmp_path, default_model):
    model = tiny_llama()
    model.generation_config.eos_token_id = default_model.tokenizer.eos_token_id
    model.save_pretrained(tmp_path)
    default_model.tokenizer.save_pretrained(tmp_path)
    gc.unfreeze()
    try:
        engine = load_engine(str(tmp_path), "cpu", "float32", top_n=3)
        assert isinstance(engine, Engine) and engine.info.device == "cpu"
        assert gc.get_freeze_count() > 0
        assert not any(obj is engine for obj in gc.get_objects())  # frozen: no collection walks it
        turn = engine.start_turn([{"role": "user", "content": "hi"}], SamplingSettings(max_new_tokens=4, seed=0))
        steps = list(turn)
        assert steps and len(steps[0].top) == 3
    finally:
        gc.unfreeze()  # the test process's objects go back to the collector
