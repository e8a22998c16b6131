"""Small things a daily user notices: a bad command is not appended to, a reply cut at its limit
says so, counts read as English, the history shows the ids the command line takes."""

from __future__ import annotations

import pytest

from chatapp.chat.settings import SamplingSettings
from chatapp.storage.export import render
from chatapp.storage.store import ChatStore
from chatapp.support.bounded_read import MAX_MESSAGE_BYTES
from chatapp.tui.app import screenshot_folder
from chatapp.tui.history_screen import HistoryScreen
from chatapp.tui.widgets.chat_log import ChatLog
from chatapp.tui.widgets.prompt_input import PromptInput
from tests.tui.conftest import app_with, ready, send, wait_until
from tests.tui.fakes import FakeEngine
from tests.tui.test_persistence import saved_chat

pytestmark = pytest.mark.anyio


async def test_a_bad_command_stays_selected_so_the_next_one_replaces_it():
    app = app_with(FakeEngine())
    async with app.run_test() as pilot:
        await ready(pilot)
        await pilot.press(*"/temp -1", "enter")
        prompt = app.chat.query_one(PromptInput)
        assert prompt.text == "/temp -1" and prompt.selected_text == "/temp -1"  # kept, to mend
        await pilot.press(*"/topk 7", "enter")
        assert app.chat.settings.top_k == 7 and prompt.text == ""  # not "/temp -1/topk 7"


async def test_a_reply_cut_at_its_token_limit_says_so_on_screen_and_in_the_export(store_path):
    app = app_with(FakeEngine(replies=[["one", " two", " three", " four"]]), SamplingSettings(max_new_tokens=3),
                   store_path=store_path)
    async with app.run_test() as pilot:
        await ready(pilot)
        await send(pilot, "count")
        reply = app.chat.conversation.last.reply
        assert reply.text == "one two three" and reply.cut_at_limit
        header = str(app.chat.query_one(ChatLog).reply_view(0).header())
        assert "cut at the 3-token limit (/max)" in header
        assert "cut at the 3-token limit" in render(app.chat.saved, "md")
        await send(pilot, "/max 10")
        await pilot.press("ctrl+r")
        await wait_until(pilot, lambda: not app.chat.generating)
        assert "cut at" not in str(app.chat.query_one(ChatLog).reply_view(0).header())  # finished on its own


async def test_the_history_shows_ids_and_counts_in_english(store_path):
    app = app_with(FakeEngine(), store_path=store_path)
    async with app.run_test() as pilot:
        await ready(pilot)
        await send(pilot, "hi")
        await pilot.press("f2")
        await wait_until(pilot, lambda: isinstance(app.screen, HistoryScreen))
        history = app.screen
        table = history.query_one("DataTable")
        assert [str(c.label) for c in table.columns.values()][-1] == "ID"
        assert str(table.get_row_at(0)[-1]) == app.chat.saved.id[:8]
        assert history.query_one("#history-box").border_subtitle == "1 chat"
        assert "--chat ID" in str(history.query_one(".hint").render())
        await pilot.press("d")
        assert any("(1 turn)?" in str(w.render()) for w in app.screen.query("Static"))
        assert render(app.chat.saved, "md").count("· 1 turn*") == 1


async def test_a_screenshot_goes_to_a_folder_that_exists_and_is_named(private_data_dir):
    app = app_with(FakeEngine())
    async with app.run_test() as pilot:
        await ready(pilot)
        app.deliver_screenshot()
        await wait_until(pilot, lambda: any(n.title == "Screenshot" for n in app._notifications))
        [note] = [n for n in app._notifications if n.title == "Screenshot"]
        saved = list(screenshot_folder().glob("*.svg"))
        assert len(saved) == 1 and saved[0].parent == private_data_dir / "chatapp" / "screenshots"
        assert saved[0].name in note.message and "Failed" not in note.message


async def test_f3_hides_the_panel_and_the_inspector_still_shows_it():
    app = app_with(FakeEngine())
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await send(pilot, "hi")
        panel = app.chat.query_one("TopKPanel")
        conversation = app.chat.query_one("#conversation")
        assert panel.display and conversation.size.width < 80
        await pilot.press("f3")
        await pilot.pause()
        assert not panel.display and conversation.size.width == 80  # the reply takes the width
        await pilot.press("ctrl+t")  # the inspector is a view of the panel: it comes back
        await pilot.pause()
        assert panel.display
        await pilot.press("escape")
        await pilot.pause()
        assert not panel.display
        await pilot.press("f3")
        assert panel.display


async def test_file_sends_a_text_file_and_refuses_what_is_not_one(tmp_path):
    (tmp_path / "notes.txt").write_text("line one\nline two\n", encoding="utf-8")
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR")
    (tmp_path / "big.txt").write_bytes(b"a" * (MAX_MESSAGE_BYTES + 1))
    engine = FakeEngine()
    app = app_with(engine)
    async with app.run_test() as pilot:
        await ready(pilot)
        await send(pilot, f"/file {tmp_path}/notes.txt")
        assert [e.user for e in app.chat.conversation.exchanges] == ["line one\nline two\n"]
        assert engine.calls[-1].messages[-1]["content"] == "line one\nline two\n"
        for name, reason in (("image.png", "binary"), ("big.txt", "more than"), ("/dev/zero", "not a regular file"),
                             ("missing.txt", "No such file")):
            app.clear_notifications()
            path = name if name.startswith("/") else f"{tmp_path}/{name}"
            await send(pilot, f"/file {path}", wait=False)
            await pilot.pause()
            assert any(n.title == "Not sent" and reason in n.message for n in app._notifications), name
        assert len(app.chat.conversation.exchanges) == 1  # nothing else was sent


async def test_f4_copies_the_reply_and_the_palette_its_code_block():
    reply = ["Here", ":\n\n", "```python\n", "print(1)\n", "```\n", "Done", "."]
    app = app_with(FakeEngine(replies=[reply, ["Second"]]))
    async with app.run_test() as pilot:
        await ready(pilot)
        await pilot.press("f4")
        assert app.clipboard == "" and any("No reply" in n.message for n in app._notifications)
        await send(pilot, "code please")
        await send(pilot, "again")
        await pilot.press("f4")
        assert app.clipboard == "Second"  # the last reply
        await pilot.press("ctrl+t", "pageup")  # the inspector on the first reply
        await pilot.pause()
        await pilot.press("f4")
        assert app.clipboard == "".join(reply)
        app.chat.action_copy_reply(code_only=True)
        assert app.clipboard == "print(1)\n"


async def test_a_chat_opened_from_the_history_goes_on_with_its_own_settings(store_path):
    older = saved_chat("older", ["A"])
    older.conversation.exchanges[0].versions[0].settings = SamplingSettings(temperature=0.2, top_k=7)
    with ChatStore(store_path) as store:
        store.save(older)
    app = app_with(FakeEngine(), store_path=store_path)
    async with app.run_test() as pilot:
        await ready(pilot)
        await send(pilot, "new chat here")
        await app.chat.open_saved(older.id)
        await pilot.pause()
        assert app.chat.settings.temperature == 0.2 and app.chat.settings.top_k == 7
        assert "T=0.2" in str(app.chat.query_one("StatusBar").render())


async def test_the_heatmap_comes_with_its_legend():
    app = app_with(FakeEngine())
    async with app.run_test(size=(120, 30)) as pilot:
        await ready(pilot)
        await send(pilot, "hi")
        legend = app.chat.query_one("HeatLegend")
        assert not legend.display
        await pilot.press("ctrl+o")
        await pilot.pause()
        text = str(legend.render())
        assert legend.display and text.startswith("heatmap, p sampled:")
        assert [word for word in text.split() if word.endswith("%")] == ["0%", "30%", "70%", "100%"]
        await pilot.press("ctrl+o")
        await pilot.pause()
        assert not legend.display


async def test_a_long_message_is_shown_collapsed_and_a_click_expands_it():
    long_text = "\n".join(f"pasted line {i}" for i in range(20))
    engine = FakeEngine()
    app = app_with(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        await send(pilot, long_text)
        assert engine.calls[-1].messages[-1]["content"] == long_text  # all of it goes to the model
        view = app.chat.query_one(ChatLog).user_view(0)
        shown = str(view.render())
        assert "pasted line 5" in shown and "pasted line 6" not in shown and "14 more lines" in shown
        await pilot.click(view)
        assert "pasted line 19" in str(view.render()) and "click to collapse" in str(view.render())
        await pilot.click(view)
        assert "pasted line 19" not in str(view.render())
        app.chat.query_one(PromptInput).focus()
        await send(pilot, "short")
        assert str(app.chat.query_one(ChatLog).user_view(1).render()).strip() == "short"


async def test_help_fits_80x24_and_scrolls_to_its_end():
    from chatapp.tui.screens import HelpScreen

    app = app_with(FakeEngine())
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await pilot.press("f1")
        await wait_until(pilot, lambda: isinstance(app.screen, HelpScreen))
        box = app.screen.query_one("#help-box")
        assert box.region.right <= 80 and box.region.bottom <= 24  # inside the terminal
        assert box.max_scroll_y > 0  # more lines than fit: it scrolls down
        await pilot.press("end")
        await pilot.pause()
        assert box.scroll_y == box.max_scroll_y
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)


async def test_the_history_fits_80_columns_with_every_column(store_path):
    with ChatStore(store_path) as store:
        for n in range(3):
            store.save(saved_chat(f"a rather long first message number {n} that goes on and on", ["A"]))
    app = app_with(FakeEngine(), store_path=store_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await pilot.press("f2")
        await wait_until(pilot, lambda: isinstance(app.screen, HistoryScreen))
        table = app.screen.query_one("DataTable")
        await pilot.pause()
        assert [str(c.label) for c in table.columns.values()] == ["Title", "Updated", "Model", "Turns", "ID"]
        assert table.virtual_size.width <= table.size.width  # nothing to scroll sideways: all shown
        assert str(table.get_row_at(0)[0]).endswith("…")  # the title is cut to make room


async def test_del_in_the_inspector_deletes_that_exchange_after_a_yes(store_path):
    from chatapp.tui.screens import ConfirmScreen
    from tests.tui.test_persistence import stored

    app = app_with(FakeEngine(replies=[["One"], ["Two"], ["Three"], ["Four"]]), store_path=store_path)
    async with app.run_test() as pilot:
        await ready(pilot)
        for text in ["first", "second", "third"]:
            await send(pilot, text)
        await pilot.press("ctrl+t", "pageup")  # the second reply
        assert app.chat.query_one(ChatLog).cursor.exchange == 1
        await pilot.press("delete")
        assert isinstance(app.screen, ConfirmScreen) and "second" in str(app.screen.question)
        await pilot.press("n")  # no: nothing changes
        assert [e.user for e in app.chat.conversation.exchanges] == ["first", "second", "third"]
        await pilot.press("delete", "y")
        await wait_until(pilot, lambda: len(app.chat.conversation.exchanges) == 2)
        assert [e.user for e in app.chat.conversation.exchanges] == ["first", "third"]
        assert [e.user for e in stored(store_path)[0].conversation.exchanges] == ["first", "third"]
        assert app.chat.query_one(ChatLog).cursor is None
        await send(pilot, "fourth")  # the chat goes on without it
        messages = app.chat.engine.calls[-1].messages
        assert [m["content"] for m in messages if m["role"] == "user"] == ["first", "third", "fourth"]


async def test_settings_set_in_a_chat_are_saved_with_it_and_come_back_when_it_is_opened(store_path):
    app = app_with(FakeEngine(), store_path=store_path)
    async with app.run_test() as pilot:
        await ready(pilot)
        await send(pilot, "first chat")
        first = app.chat.saved.id
        await send(pilot, "/set temp=0.3 topk=9")  # after its last reply: no reply records them
        await pilot.press("ctrl+n")
        await send(pilot, "/temp 1.1")  # the new chat's own, once it is saved
        await send(pilot, "second chat")
        second = app.chat.saved.id
        await app.chat.open_saved(first)
        await pilot.pause()
        assert (app.chat.settings.temperature, app.chat.settings.top_k) == (0.3, 9)
        await app.chat.open_saved(second)
        await pilot.pause()
        assert app.chat.settings.temperature == 1.1
    with ChatStore(store_path) as store:
        assert store.load(first).settings.temperature == 0.3 and store.load(second).settings.temperature == 1.1


async def test_the_status_line_shows_a_system_prompt_while_it_is_in_force():
    app = app_with(FakeEngine())
    async with app.run_test(size=(160, 24)) as pilot:
        await ready(pilot)
        status = lambda: str(app.chat.query_one("StatusBar").render())  # noqa: E731
        assert "system:" not in status()
        await send(pilot, "/system You are a pirate who speaks only in rhymes")
        assert "system: You are a pirate who sp…" in status()  # its first 24 characters
        await send(pilot, "ahoy")
        assert app.chat.engine.calls[-1].messages[0] == {
            "role": "system", "content": "You are a pirate who speaks only in rhymes"}
        await send(pilot, "/system")
        assert "system:" not in status()
