"""Pilot tests of F2's search: typing filters the list live, Esc clears then closes, a found
chat opens, and the keys of the list keep working beside the field."""

from __future__ import annotations

import pytest
from textual.widgets import DataTable, Input

from chatapp.storage.store import ChatStore
from chatapp.tui.history_screen import HistoryScreen
from tests.tui.conftest import app_with, ready, wait_until
from tests.tui.fakes import FakeEngine
from tests.tui.test_persistence import saved_chat

pytestmark = pytest.mark.anyio


def _save(store_path) -> list:
    """Four chats, the last saved most recent; two mention penguins, one only in its reply."""
    chats = [saved_chat("Tell me about penguins", ["They ", "swim."]),
             saved_chat("weather today", ["Sunny ", "with [bold] penguins"]),
             saved_chat("a recipe", ["Flour, ", "50% water"], title="Bread"),
             saved_chat("gamma", ["C"])]
    with ChatStore(store_path) as store:
        for chat in chats:
            store.save(chat)
    return chats


def _subtitle(history: HistoryScreen) -> str:
    return str(history.query_one("#history-box").border_subtitle)


async def test_typing_in_the_search_filters_live_and_a_found_chat_opens(store_path):
    chats = _save(store_path)
    app = app_with(FakeEngine(), store_path=store_path)
    async with app.run_test(size=(120, 36)) as pilot:
        await ready(pilot)
        await pilot.press("f2")
        history = app.screen
        assert isinstance(history, HistoryScreen) and _subtitle(history) == "4 chats"
        assert history.focused is history.query_one(DataTable)  # its keys work at once

        await pilot.press("slash", *"PENG")
        assert history.focused is history.query_one("#search", Input)
        assert [c.title for c in history.chats] == ["weather today", "Tell me about penguins"]
        assert _subtitle(history) == "2 of 4 chats"
        await pilot.press(*"uins swim")  # every word must match: only the first chat's reply swims
        assert [c.id for c in history.chats] == [chats[0].id] and _subtitle(history) == "1 of 4 chats"
        await pilot.press("ctrl+u", *"50%")  # no wildcards: the literal "50%" of the bread reply
        assert [c.title for c in history.chats] == ["Bread"]
        await pilot.press(*" nothing")
        assert history.chats == [] and _subtitle(history) == "0 of 4 chats"

        await pilot.press("escape")  # clears the search, back to the list
        assert app.screen is history and history.query_one("#search", Input).value == ""
        assert len(history.chats) == 4 and history.focused is history.query_one(DataTable)

        await pilot.press("slash", *"penguins", "down", "down", "enter")  # ↓ to the list, ↓ a row, open
        await wait_until(pilot, lambda: app.chat.saved.id == chats[0].id, what="found chat opened")
        assert app.screen is app.chat
        assert [e.user for e in app.chat.conversation.exchanges] == ["Tell me about penguins"]


async def test_enter_goes_to_the_list_and_its_keys_work_on_the_results(store_path):
    chats = _save(store_path)
    app = app_with(FakeEngine(), store_path=store_path)
    async with app.run_test(size=(120, 36)) as pilot:
        await ready(pilot)
        await pilot.press("f2", "slash", *"recipe", "enter")
        history = app.screen
        assert history.focused is history.query_one(DataTable) and history.selected_id == chats[2].id
        await pilot.press("r", *"Sourdough", "enter")  # rename the found chat; the search stays
        await pilot.pause()
        assert [c.title for c in history.chats] == ["Sourdough"] and _subtitle(history) == "1 of 4 chats"
        await pilot.press("d", "y")
        await pilot.pause()
        assert history.chats == [] and _subtitle(history) == "0 of 3 chats"
        await pilot.press("escape", "escape")  # clear, then close
        assert app.screen is app.chat
    with ChatStore(store_path) as store:
        assert sorted(c.title for c in store.list_chats()) == ["Tell me about penguins", "gamma", "weather today"]
