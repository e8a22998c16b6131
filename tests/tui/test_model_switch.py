"""Switching the model inside the app: /model SPEC, the picker, and each reply's model."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest

from chatapp.loading.model_specs import local_models
from chatapp.storage.export import to_markdown
from chatapp.support.errors import ModelLoadError
from chatapp.tui.model_picker import ModelPicker
from chatapp.tui.widgets.status_bar import StatusBar
from tests.tui.conftest import app_with, ready, send, wait_until
from tests.tui.fakes import FAKE_INFO, FakeEngine
from tests.tui.test_persistence import errors, stored

pytestmark = pytest.mark.anyio

OTHER_INFO = replace(FAKE_INFO, name="OtherLM-2")
"""The model switched to."""


def opener(engines: dict[str, FakeEngine], opened: list[str], gate: threading.Event | None = None):
    """Loads the fake engine a spec names (as the real loader would, on the engine thread)."""

    def open_model(spec, progress):
        opened.append(spec)
        progress(f"loading {spec}")
        if gate is not None:
            gate.wait(timeout=10)
        if spec not in engines:
            raise ModelLoadError(f"could not load model {spec!r}: no weights")
        return engines[spec]

    return open_model


async def test_model_switches_the_engine_and_each_reply_records_its_model(tmp_path, store_path):
    gguf = tmp_path / "other.gguf"
    gguf.write_bytes(b"GGUF")  # the spec check looks for the file only; the fake loader loads it
    other = FakeEngine(replies=[["Other", " reply"]], info=OTHER_INFO)
    opened: list[str] = []
    gate = threading.Event()
    app = app_with(FakeEngine(), store_path=store_path, open_model=opener({str(gguf): other}, opened, gate))
    async with app.run_test(size=(160, 30)) as pilot:
        await ready(pilot)
        await send(pilot, "hi")
        await send(pilot, f"/model {gguf}")
        await wait_until(pilot, lambda: "loading" in str(app.chat.query_one(StatusBar).render()))
        await send(pilot, "too early", wait=False)  # refused while the switch loads, kept in the prompt
        assert "is loading" in list(app._notifications)[-1].message and app.chat.conversation.last.user == "hi"
        gate.set()
        await wait_until(pilot, lambda: app.chat.engine is other)
        assert opened == [str(gguf)] and "OtherLM-2" in str(app.chat.query_one(StatusBar).render())
        app.chat.query_one("PromptInput").clear()
        await send(pilot, "and now?")
        first, second = (e.reply for e in app.chat.conversation.exchanges)
        assert (first.model, second.model) == (FAKE_INFO.name, "OtherLM-2")
        assert second.text == "Other reply"
        assert [m["content"] for m in other.calls[-1].messages] == ["hi", "Hello, world!", "and now?"]
    [chat] = stored(store_path)
    assert [e.reply.model for e in chat.conversation.exchanges] == [FAKE_INFO.name, "OtherLM-2"]
    assert chat.model == "OtherLM-2"
    markdown = to_markdown(chat)
    assert f"({FAKE_INFO.name})" in markdown and "(OtherLM-2)" in markdown


async def test_a_bad_spec_or_a_failed_load_changes_nothing(tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a model")
    opened: list[str] = []
    engine = FakeEngine()
    app = app_with(engine, open_model=opener({}, opened))
    async with app.run_test() as pilot:
        await ready(pilot)
        await send(pilot, "/model /no/such/model.gguf")
        assert opened == [] and "no GGUF file at /no/such/model.gguf" in errors(app)[-1]
        await send(pilot, f"/model {broken}")
        await wait_until(pilot, lambda: len(errors(app)) == 2)
        assert opened == [str(broken)] and "no weights" in errors(app)[-1] and "FakeLM" in errors(app)[-1]
        assert app.chat.engine is engine and app.chat.switching is None
        await send(pilot, "still here")
        assert app.chat.conversation.last.reply.text == "Hello, world!"


async def test_the_picker_lists_the_models_found_and_switches_to_the_chosen_one(tmp_path):
    folder = tmp_path / "models"
    (folder / "nested").mkdir(parents=True)
    (folder / "nested" / "tiny-q4.gguf").write_bytes(b"GGUF" * 256)
    other = FakeEngine(info=OTHER_INFO)
    spec = str(folder / "nested" / "tiny-q4.gguf")
    app = app_with(FakeEngine(), open_model=opener({spec: other}, []), model_folders=(str(folder),))
    async with app.run_test(size=(120, 30)) as pilot:
        await ready(pilot)
        await send(pilot, "/model")
        assert isinstance(app.screen, ModelPicker)
        specs = [choice.spec for choice in app.screen.choices]
        assert spec in specs
        await pilot.press("escape")
        assert not isinstance(app.screen, ModelPicker) and app.chat.engine is not other
        await send(pilot, "/model")
        app.screen.query_one("OptionList").highlighted = specs.index(spec)
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.chat.engine is other)


def test_local_models_finds_gguf_files_folders_and_the_hugging_face_cache(tmp_path, monkeypatch):
    folder = tmp_path / "models"
    (folder / "a" / "b").mkdir(parents=True)
    (folder / "top.gguf").write_bytes(b"x" * 2**20)
    (folder / "a" / "b" / "deep.gguf").write_bytes(b"x")
    (folder / "a" / "b" / "c").mkdir()
    (folder / "a" / "b" / "c" / "too-deep.gguf").write_bytes(b"x")
    (folder / "hf-folder").mkdir()
    (folder / "hf-folder" / "config.json").write_text("{}")
    (folder / "notes.txt").write_text("not a model")
    cache = tmp_path / "hub"
    (cache / "models--org--name" / "snapshots" / "abc").mkdir(parents=True)
    (cache / "models--org--name" / "snapshots" / "abc" / "config.json").write_text("{}")
    (cache / "models--org--partial" / "snapshots" / "abc").mkdir(parents=True)  # no config: not listed
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))

    choices = local_models([folder, tmp_path / "missing"])

    specs = [c.spec for c in choices]
    assert specs[0] == "default" and choices[0].name == "SmolLM2-135M-Instruct"
    assert str(folder / "top.gguf") in specs and str(folder / "a" / "b" / "deep.gguf") in specs
    assert str(folder / "a" / "b" / "c" / "too-deep.gguf") not in specs  # deeper than SCAN_DEPTH
    assert str(folder / "hf-folder") in specs and "org/name" in specs and "org/partial" not in specs
    assert next(c for c in choices if c.spec.endswith("top.gguf")).size_mb == 1.0


async def test_a_chat_written_by_another_model_says_so_when_it_is_reopened(store_path):
    from chatapp.storage.store import ChatStore
    from tests.tui.test_persistence import saved_chat

    older = saved_chat("older", ["A"])
    older.conversation.exchanges[0].versions[0].model = "OtherLM-2"
    same = saved_chat("same", ["B"])
    same.conversation.exchanges[0].versions[0].model = FAKE_INFO.name
    with ChatStore(store_path) as store:
        store.save(older)
        store.save(same)
    app = app_with(FakeEngine(), store_path=store_path, chat=older)
    async with app.run_test() as pilot:
        await ready(pilot)
        said = lambda: [n.message for n in app._notifications if "was written by" in n.message]  # noqa: E731
        assert said() == [f"This chat's latest reply was written by OtherLM-2; it goes on with {FAKE_INFO.name}. "
                          "/model switches (alone, it lists the models found here)."]
        app.clear_notifications()
        await app.chat.open_saved(same.id)
        await pilot.pause()
        assert said() == []
        await app.chat.open_saved(older.id)
        await pilot.pause()
        assert len(said()) == 1


async def test_a_reopened_chat_goes_on_with_the_model_that_wrote_it(tmp_path, store_path):
    """Each reply records the spec of its model; reopening the chat (at start, or from F2)
    switches to it, unless `--model` was given for this start; a spec that no longer loads is
    named, and the chat goes on with the loaded model."""
    from chatapp.storage.store import ChatStore

    gguf = tmp_path / "other.gguf"
    gguf.write_bytes(b"GGUF")
    other = FakeEngine(replies=[["Other"]], info=replace(OTHER_INFO, spec=str(gguf)))
    app = app_with(FakeEngine(), store_path=store_path, open_model=opener({str(gguf): other}, []))
    async with app.run_test() as pilot:
        await ready(pilot)
        await send(pilot, f"/model {gguf}")
        await wait_until(pilot, lambda: app.chat.engine is other)
        await send(pilot, "hi")
        written = app.chat.saved.id
    [chat] = stored(store_path)
    assert chat.conversation.exchanges[0].reply.model_spec == str(gguf)  # saved with the reply

    opened: list[str] = []
    app = app_with(FakeEngine(), store_path=store_path, chat=chat, open_model=opener({str(gguf): other}, opened))
    async with app.run_test() as pilot:
        await wait_until(pilot, lambda: app.chat.engine is other, what="the switch to the chat's model")
        assert opened == [str(gguf)]
        assert any("written by OtherLM-2: going on with it" in n.message for n in app._notifications)

    opened.clear()
    app = app_with(FakeEngine(), store_path=store_path, chat=chat, open_model=opener({str(gguf): other}, opened),
                   follow_model_at_start=False)  # `chatapp --model X --chat ID`: X it is
    async with app.run_test() as pilot:
        await ready(pilot)
        await pilot.pause()
        assert opened == [] and app.chat.engine is not other
        await app.chat.open_saved(app.chat.saved.id)  # no-op: the chat on screen
        await app.chat.action_new_chat()
        await app.chat.open_saved(written)  # chosen in F2: it follows its model
        await wait_until(pilot, lambda: app.chat.engine is other)

    gguf.unlink()  # the file has gone since
    app = app_with(FakeEngine(), store_path=store_path, chat=chat, open_model=opener({}, []))
    async with app.run_test() as pilot:
        await ready(pilot)
        await pilot.pause()
        [said] = [n.message for n in app._notifications if "was written by" in n.message]
        assert said.startswith("This chat's latest reply was written by OtherLM-2 (no GGUF file at")
        assert f"it goes on with {FAKE_INFO.name}" in said and app.chat.engine.info.name == FAKE_INFO.name
    with ChatStore(store_path) as store:
        assert store.load(written).conversation.exchanges[0].reply.model_spec == str(gguf)
