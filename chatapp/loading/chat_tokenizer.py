"""A chat tokenizer read straight from a model folder, without importing transformers.

Importing transformers' tokenizer classes pulls in most of transformers and several torch
subsystems, a large share of a warm start (README, Performance, "Start-up"). `ChatTokenizer` offers what
chatapp uses of a transformers tokenizer, built from the same files with the libraries
transformers itself uses for them: `tokenizers` for `tokenizer.json` and a sandboxed jinja2
environment, set up as transformers sets up its own, for the chat template. `load_chat_tokenizer`
returns one only for the plain case it reproduces exactly (the generic `TokenizersBackend`
class, only the config keys it knows, no clean-up of spaces, a template without transformers'
own `{% generation %}` tag, a jinja2 that transformers would trust);
for anything else it returns None and the caller uses transformers. The tests compare it with
transformers' tokenizer on the default model: templates, ids, decoded text and token views.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

from chatapp.loading.gguf_files import SOURCE_NOTE

GENERIC_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")
"""`tokenizer_class` values that mean "just tokenizer.json", with no class-specific behaviour."""
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")
"""The named special tokens a chat template may read, as transformers passes them."""
GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")
"""transformers' assistant-mask extension tag, which plain jinja2 cannot parse."""
KNOWN_CONFIG_KEYS = frozenset(SPECIAL_TOKEN_KEYS) | {
    "backend", "tokenizer_class", "is_local", "local_files_only", "model_max_length", "chat_template",
    "clean_up_tokenization_spaces",
}
"""tokenizer_config.json keys whose meaning `ChatTokenizer` reproduces; any other key (extra
special tokens, prefix-space or legacy switches...) may change behaviour: transformers loads those."""
MIN_JINJA = (3, 1, 6)
"""Oldest jinja2 whose sandbox transformers trusts with a template from the Hub (older ones have
known escapes); with an older one, transformers renders (and refuses)."""


def _token_text(value) -> str | None:
    """A special token as tokenizer_config.json states it: a string or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _chat_template(folder: Path, config: dict) -> str | None:
    file = folder / "chat_template.jinja"
    if file.is_file():
        return file.read_text(encoding="utf-8")
    template = config.get("chat_template")
    return template if isinstance(template, str) else None


def _template_environment():
    """A jinja2 sandbox configured as transformers configures the one it renders templates in."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):
        return datetime.now().strftime(format)

    class TemplateDict:
        """`dict()` for templates, without the type's attributes."""

        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    class TemplateNamespace(jinja2.utils.Namespace):
        """`namespace()` without dunder or underscore attributes (no reaching into CPython)."""

        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace._check(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            TemplateNamespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"chat templates cannot set {name!r} on a namespace")

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    environment.filters["tojson"] = tojson
    environment.globals["raise_exception"] = raise_exception
    environment.globals["strftime_now"] = strftime_now
    environment.globals["dict"] = TemplateDict()
    environment.globals["namespace"] = TemplateNamespace
    return environment


class ChatTokenizer:
    """The parts of a transformers fast tokenizer that chatapp uses, over `tokenizers.Tokenizer`."""

    def __init__(self, backend, special_tokens: dict[str, str], chat_template: str) -> None:
        """Wrap a `tokenizers.Tokenizer` with its named special tokens and chat template."""
        self.backend_tokenizer = backend
        self.chat_template = chat_template
        self.special_tokens_map = special_tokens
        self.eos_token = special_tokens.get("eos_token")
        self.eos_token_id = backend.token_to_id(self.eos_token) if self.eos_token else None
        self.all_special_tokens = list(dict.fromkeys(special_tokens.values()))  # as transformers lists them
        self._template = _template_environment().from_string(chat_template)

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        """`{"input_ids": [...]}` for one string."""
        return {"input_ids": self.backend_tokenizer.encode(text, add_special_tokens=add_special_tokens).ids}

    def apply_chat_template(self, messages: list[dict], tokenize: bool = False, add_generation_prompt: bool = False) -> str:
        """The conversation rendered by the chat template, as text (`tokenize` must be False)."""
        if tokenize:
            raise ValueError("ChatTokenizer renders text only: encode the result with the tokenizer")
        plain = [{key: value for key, value in message.items() if value is not None} for message in messages]
        return self._template.render(
            messages=plain, tools=None, documents=None, add_generation_prompt=add_generation_prompt,
            **self.special_tokens_map,
        )

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        """Text of `ids`."""
        return self.backend_tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def convert_ids_to_tokens(self, token_id: int) -> str | None:
        """The vocabulary entry of one id."""
        return self.backend_tokenizer.id_to_token(token_id)

    def get_vocab(self) -> dict[str, int]:
        """Every token and its id, added tokens included."""
        return self.backend_tokenizer.get_vocab(with_added_tokens=True)


def _jinja_is_trusted() -> bool:
    import jinja2

    try:
        return tuple(int(part) for part in jinja2.__version__.split(".")[:3]) >= MIN_JINJA
    except ValueError:
        return False


def load_chat_tokenizer(folder: str | Path) -> ChatTokenizer | None:
    """The tokenizer of the model in `folder`, or None when only transformers can load it exactly.

    A class with behaviour of its own (Gemma's rebuilds its pipeline in code) counts as plain in
    chatapp's own converted folders (`SOURCE_NOTE`): their tokenizer.json is what transformers
    wrote from the class it had built, so reading it gives that pipeline.
    """
    folder = Path(folder)
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        template = _chat_template(folder, config)
        if (
            (config.get("tokenizer_class") not in GENERIC_CLASSES and not (folder / SOURCE_NOTE).is_file())
            or config.get("clean_up_tokenization_spaces")
            or set(config) - KNOWN_CONFIG_KEYS
            or (folder / "special_tokens_map.json").exists()  # transformers merges it in
            or not _jinja_is_trusted()
            or not (folder / "tokenizer.json").is_file()
            or template is None
            or GENERATION_TAG.search(template)
        ):
            return None
        from tokenizers import Tokenizer

        special = {key: text for key in SPECIAL_TOKEN_KEYS if (text := _token_text(config.get(key))) is not None}
        return ChatTokenizer(Tokenizer.from_file(str(folder / "tokenizer.json")), special, template)
    except Exception:  # noqa: BLE001 - unreadable or unusual files: let transformers load them
        return None
