"""The Textual application: built by `make_app` from settings and an engine loader.

Nothing happens at import time. `make_app` wires the chat screen to whatever `load_engine`
returns (the real `Engine`, or a scripted fake in tests); `run_tui` runs it for the CLI.
Every way out saves the chat first: Ctrl+Q, Ctrl+C, the palette's quit, and SIGTERM or SIGHUP
(also raised when the terminal goes away, `chatapp.tui.terminal`). A signal is handled on the
event loop, so the save never interrupts the UI thread mid-update, and arms an `ExitDeadline`
that ends the process anyway should the loop not get there in time.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

from platformdirs import user_data_dir
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from chatapp.chat.settings import DEFAULT_TOP_N, SamplingSettings, shown
from chatapp.storage.chat_file import SavedChat
from chatapp.storage.history_file import APP_NAME
from chatapp.tui.chat_screen import ChatScreen, EngineLoader
from chatapp.tui.exit_deadline import ExitDeadline
from chatapp.tui.model_switch import DEFAULT_MODEL_FOLDERS, ModelOpener
from chatapp.tui.screens import ConfirmQuitScreen
from chatapp.tui.widgets.prompt_input import PromptInput

NARROW_WIDTH = 110
"""Terminals narrower than this get the compact layout (`-narrow` in app.tcss)."""
SETTING_COMMANDS = (
    ("Set temperature…", "/temp ", "0 is greedy; higher is more random"),
    ("Set top-k…", "/topk ", "keep only the k likeliest tokens (0 = all)"),
    ("Set top-p…", "/topp ", "nucleus sampling, or off"),
    ("Set min-p…", "/minp ", "drop tokens below min-p × the best, or off"),
    ("Set repetition penalty…", "/rep ", "penalise tokens already said, or off"),
    ("Set max reply length…", "/max ", "longest reply in tokens"),
    ("Set seed…", "/seed ", "fixed seed for reproducible replies, or off"),
    ("Set several settings…", "/set ", "e.g. temp=0.5 topk=40"),
    ("Set system prompt…", "/system ", "sent before the conversation; empty clears it"),
    ("Save chat as JSON…", "/save ", "the whole chat, token records included (/load reads it)"),
    ("Load chat from JSON…", "/load ", "open a chat saved with /save"),
    ("Export chat…", "/export ", "a Markdown transcript (.md) or the JSON document (.json)"),
    ("Send a file…", "/file ", "a text file's contents as a message (UTF-8, at most 1 MiB)"),
    ("Switch model…", "/model", "go on with another model: the models found here, or /model PATH"),
)
"""Palette entries that put a slash command in the prompt for the user to complete."""
EXIT_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))
"""Signals that save the chat and quit (the terminal closed, the system shutting down)."""
SIGNAL_EXIT_BASE = 128
"""Exit code after a signal: 128 + its number, as shells report it."""


class ChatApp(App):
    """chatapp's terminal UI."""

    CSS_PATH = "app.tcss"
    TITLE = "chatapp"
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (NARROW_WIDTH, "-wide")]
    BINDINGS = [
        Binding("ctrl+q", "quit_safely", "Quit", priority=True),
        Binding("ctrl+c", "copy_or_quit", "Quit", show=False, priority=True),
    ]
    """Quitting asks first while a reply is being written."""

    def __init__(self, settings: SamplingSettings, load_engine: EngineLoader, top_n: int = DEFAULT_TOP_N, *,
                 store_path: Path | None = None, chat: SavedChat | None = None, system: str | None = None,
                 theme_name: str | None = None, notices: Iterable[str] = (), open_model: ModelOpener | None = None,
                 model_folders: tuple[str, ...] = DEFAULT_MODEL_FOLDERS, follow_model_at_start: bool = True) -> None:
        """An app that loads its engine with `load_engine` once running (arguments: `make_app`)."""
        super().__init__(driver_class=_terminal_driver())
        self.chat = ChatScreen(settings.validated(), load_engine, top_n, store_path=store_path, chat=chat,
                               system=system, open_model=open_model, model_folders=model_folders,
                               follow_model_at_start=follow_model_at_start)
        self.theme_name = theme_name
        self.notices = list(notices)
        """Warnings from before the app started (the config file's), shown once it is on screen."""
        self._deadline: ExitDeadline | None = None
        self._signal_handlers: dict[int, Any] = {}

    def on_mount(self) -> None:
        """Apply the configured theme, show the notices and take over the exit signals."""
        if self.theme_name and self.theme_name in self.available_themes:
            self.theme = self.theme_name
        elif self.theme_name:
            self.notices.append(f"unknown theme {shown(self.theme_name)} in the config; using {self.theme!r}")
        for notice in self.notices:
            self.notify(notice, title="Config", severity="warning", timeout=10, markup=False)
        self._take_signals()

    def _take_signals(self) -> None:
        """Handle SIGTERM and SIGHUP in Python's handler, which runs between two bytecodes of the
        UI thread even while the event loop is too busy to look at a signal (asyncio's handlers
        wait for the loop)."""
        loop = asyncio.get_running_loop()
        self._deadline = ExitDeadline(self._last_words)

        def signalled(number: int, _frame: object) -> None:
            self._deadline.arm(SIGNAL_EXIT_BASE + number)
            loop.call_soon_threadsafe(self.exit_on_signal, number)

        for number in EXIT_SIGNALS:
            try:
                self._signal_handlers[number] = signal.signal(number, signalled)
            except ValueError:  # not the main thread (an app run inside another program's thread)
                break

    def on_ready(self) -> None:
        """The first frame is on screen: start loading the model.

        Not earlier: importing torch holds the interpreter for seconds, and the prompt should be
        there (and take a message) before that starts.
        """
        self.chat.load()

    def _last_words(self) -> None:
        """The exit deadline's, on its own thread: save a snapshot of the chat and put the terminal
        back (its driver's `restore_terminal`), as the regular way out would have."""
        self.chat.keeper.rescue_save()
        restore = getattr(self._driver, "restore_terminal", None)
        if restore is not None:
            restore()

    def on_unmount(self) -> None:
        """Give the signals back (a deadline already armed still runs: the way out may hang)."""
        for number, handler in self._signal_handlers.items():
            signal.signal(number, handler)
        self._signal_handlers.clear()
        if self._deadline is not None:
            self._deadline.release()

    def exit_on_signal(self, number: int) -> None:
        """SIGTERM or SIGHUP: save and quit cleanly, mid-reply too (the partial reply is kept)."""
        self.exit(return_code=SIGNAL_EXIT_BASE + number)

    def exit(self, result: Any = None, return_code: int = 0, message: Any = None) -> None:
        """Save the chat (and close the history), then quit."""
        self.chat.close_store()
        super().exit(result, return_code, message)

    def deliver_screenshot(self, filename: str | None = None, path: str | None = None,
                           time_format: str | None = None) -> str | None:
        """Save a screenshot (the palette's "Save screenshot") into a folder that exists: the user
        data folder's `screenshots/`, or the current folder (Textual's default, `~/Downloads`,
        may not exist); the notification names the file."""
        return super().deliver_screenshot(filename, path or str(screenshot_folder()), time_format)

    def get_default_screen(self) -> Screen:
        """The chat screen is the app."""
        return self.chat

    def action_quit_safely(self) -> None:
        """Quit, asking first if a reply would be cut off."""
        if not self.chat.generating:
            self.exit()
            return

        def answered(quit_app: bool | None) -> None:
            if quit_app:
                self.exit()

        if not isinstance(self.screen, ConfirmQuitScreen):
            self.push_screen(ConfirmQuitScreen(), answered)

    def action_copy_or_quit(self) -> None:
        """Ctrl+C copies a selection in the prompt; otherwise it quits (asking mid-reply)."""
        focused = self.focused
        if isinstance(focused, PromptInput) and focused.selected_text:
            focused.action_copy()
            return
        self.action_quit_safely()

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """The palette: Textual's own commands plus every chat action and setting."""
        yield from super().get_system_commands(screen)
        chat = self.chat
        yield SystemCommand("New chat", "Forget the conversation (/clear)", chat.action_new_chat)
        yield SystemCommand("Regenerate", "A new version of the inspected (or last) reply: a branch from there",
                            chat.action_regenerate)
        yield SystemCommand("Edit message", "Change the inspected (or last) message and resend it as a branch",
                            chat.action_edit_last)
        yield SystemCommand("Stop reply", "Stop the reply being written", chat.action_stop)
        yield SystemCommand("Token inspector", "Any reply's tokens: branch at any, odds, what-if, lens", chat.action_inspect)
        yield SystemCommand("Look up a token's odds", "At the inspected (or last) step, whatever its rank (W)",
                            lambda: chat.action_probe_step("look_up"))
        yield SystemCommand("What if", "The inspected (or last) step under other sampling settings (S)",
                            lambda: chat.action_probe_step("what_if"))
        yield SystemCommand("Logit lens", "Each layer's top token at the inspected (or last) step (L)",
                            lambda: chat.action_probe_step("lens"))
        yield SystemCommand("Step mode", "Pick each token of the next replies yourself; during one, let the model finish (F5)",
                            chat.action_step_mode)
        yield SystemCommand("Completion mode", "Continue plain text instead of chatting, or chat again (--raw)",
                            chat.action_completion_mode)
        yield SystemCommand("Heatmap", "Colour reply tokens by probability", chat.action_heatmap)
        yield SystemCommand("Candidates panel", "Show or hide the candidates panel (F3)", chat.action_toggle_panel)
        yield SystemCommand("Copy reply", "The inspected or last reply, to the clipboard (F4)", chat.action_copy_reply)
        yield SystemCommand("Copy code block", "The reply's last code block, to the clipboard",
                            lambda: chat.action_copy_reply(code_only=True))
        yield SystemCommand("Help", "Slash commands and keys (/help)", chat.action_help)
        yield SystemCommand("History", "Saved chats: open, rename, delete (F2)", chat.action_history)
        for title, command, help_text in SETTING_COMMANDS:
            yield SystemCommand(title, help_text, self._prefill(command))

    def _prefill(self, command: str) -> Callable[[], None]:
        def prefill() -> None:
            prompt = self.chat.query_one(PromptInput)
            prompt.set_prompt(command)
            prompt.focus()

        return prefill


def screenshot_folder() -> Path:
    """Where screenshots go: `screenshots/` in the user data folder, made if need be, or the
    current folder when it cannot be made."""
    folder = Path(user_data_dir(APP_NAME, appauthor=False)) / "screenshots"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return Path.cwd()
    return folder


def _terminal_driver():
    """chatapp's driver where Textual would use its Linux one (`chatapp.tui.terminal`); None
    (Textual's choice) elsewhere."""
    if sys.platform == "win32":
        return None
    from chatapp.tui.terminal import ChatDriver

    return ChatDriver


def make_app(*, settings: SamplingSettings, load_engine: EngineLoader, top_n: int = DEFAULT_TOP_N,
             store_path: Path | None = None, chat: SavedChat | None = None, system: str | None = None,
             theme: str | None = None, notices: Iterable[str] = (), open_model: ModelOpener | None = None,
             model_folders: tuple[str, ...] = DEFAULT_MODEL_FOLDERS, follow_model_at_start: bool = True) -> ChatApp:
    """Build the TUI.

    Args:
        settings: initial sampling settings (validated).
        load_engine: called on the engine thread with a progress callback; returns an engine.
        top_n: candidates listed per step.
        store_path: the chat history database; None for the user data folder (tests pass a
            temporary path).
        chat: a saved chat to reopen (`chatapp --resume`, `--chat ID`); None starts a new one.
        system: system prompt of a new chat.
        theme: Textual theme name; an unknown one is reported and the default kept.
        notices: warnings to show once the app is on screen (e.g. the config file's).
        open_model: loads another model for `/model` on the engine thread (a spec and a progress
            callback; returns an engine); None: the app cannot switch models.
        model_folders: where the model picker looks for `.gguf` files and model folders.
        follow_model_at_start: a reopened `chat` switches to the model that wrote its latest
            reply once the first model is loaded (off when `--model` was given).
    """
    return ChatApp(settings, load_engine, top_n, store_path=store_path, chat=chat, system=system, theme_name=theme,
                   notices=notices, open_model=open_model, model_folders=model_folders,
                   follow_model_at_start=follow_model_at_start)


def run_tui(settings: SamplingSettings, load_engine: EngineLoader, top_n: int = DEFAULT_TOP_N,
            **options: Any) -> int:
    """Run the TUI until the user quits; return the process exit code (`options`: `make_app`'s)."""
    app = make_app(settings=settings, load_engine=load_engine, top_n=top_n, **options)
    app.run()
    chat = app.chat.keeper
    if chat.rescued is not None:
        print(f"chatapp: the chat history could not take this chat ({chat.save_error}); it was written to "
              f"{chat.rescued} (/load reads it)", file=sys.stderr)
    elif chat.save_error is not None:
        print(f"chatapp: the chat history could not take this chat ({chat.save_error}), and no rescue file "
              "could be written either", file=sys.stderr)
    return app.return_code or 0
