"""Turns: from a conversation and sampling settings to one `Step` per token.

- `engine`: `Engine.start_turn` returns a `Turn`;
- `turn`: `Turn`, a plain generator of steps that prefills the prompt over the KV cache it
  reuses and chooses every token through `chatapp.lm_head`;
- `detokenizer`: stream-safe text deltas and a token's literal bytes;
- `loader`: how the apps build an engine (a model loaded, its context limited);
- `thread`: the one thread on which a UI process does all its model work;
- `device_steps`: a GPU's decode step, which reads back to the host once (`host_syncs` counts
  the operations that would wait, on any device).

May import: `chatapp.lm_head`, `chatapp.runtime`, `chatapp.loading`, `chatapp.chat` and
`chatapp.support`; never a UI or storage.
"""
