"""What every decoder offers: prefill and decode-one over a KV cache it owns.

A `Decoder` keeps a KV cache and the ids whose keys and values it holds, side by side, so the
engine can reuse any prefix of the conversation (a new turn, a regenerate, a branch) by
cropping (`keep`) instead of recomputing. Only the final block's hidden state of the last
position comes back: the LM head (`chatapp.lm_head`) projects that one vector, never the whole
prompt (`decode_one_layers` returns every layer's, for the logit lens). The variants live in their own modules and `chatapp.runtime.decoder_choice` picks one.
"""

from __future__ import annotations

import torch

from chatapp.runtime.devices import input_device


def grown_capacity(capacity: int, length: int, max_length: int, minimum: int) -> int:
    """How many tokens KV buffers holding `capacity` should grow to for `length`: doubled (from
    at least `minimum`) until enough, but never beyond the context window `max_length` unless
    `length` itself is."""
    capacity = max(minimum, capacity)
    while capacity < length:
        capacity *= 2
    return max(length, min(capacity, max_length))


class Decoder:
    """The KV cache of one conversation and the token ids it holds."""

    kind = ""
    """Which decoder runs the model, for display."""

    def __init__(self, model) -> None:
        """Start empty for `model` (a transformers causal LM)."""
        self.model = model
        self.device = input_device(model)
        self.token_ids: list[int] = []

    def __len__(self) -> int:
        return len(self.token_ids)

    def common_prefix(self, ids: list[int]) -> int:
        """How many leading `ids` the cache already holds."""
        n = 0
        for held, wanted in zip(self.token_ids, ids):
            if held != wanted:
                break
            n += 1
        return n

    def keep(self, n: int) -> None:
        """Crop the cache to its first `n` tokens."""
        raise NotImplementedError

    def reset(self) -> None:
        """Forget everything (e.g. after an error left the cache in an unknown state)."""
        raise NotImplementedError

    def cache_bytes(self) -> int:
        """Memory the KV cache holds."""
        raise NotImplementedError

    @torch.inference_mode()
    def prefill(self, ids: list[int]) -> torch.Tensor:
        """Run `ids` after what the cache holds; return the last position's hidden state `(d_model,)`."""
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)  # (1, T)
        return self._forward(input_ids, ids)

    @torch.inference_mode()
    def decode_one(self, token_id: int, token: torch.Tensor | None = None) -> torch.Tensor:
        """Run one token; return its hidden state `(d_model,)`. `token`, where given, is that id
        already on the device (one long, e.g. the draw that chose it), so the step copies nothing
        from the host."""
        if token is not None:  # (on the head's device, where Accelerate spread the layers)
            input_ids = token.reshape(1, 1).to(self.device)
        else:
            input_ids = torch.tensor([[token_id]], dtype=torch.long, device=self.device)  # (1, 1)
        return self._forward(input_ids, [token_id])

    @torch.inference_mode()
    def decode_one_layers(self, token_id: int) -> torch.Tensor:
        """Run one token, as `decode_one` does, and return the logit lens's inputs `(layers,
        d_model)`: each decoder layer's output at it through the model's final norm, as the LM
        head sees the last layer's. The last row is the context vector of this step."""
        input_ids = torch.tensor([[token_id]], dtype=torch.long, device=self.device)  # (1, 1)
        return self._forward_layers(input_ids, [token_id])

    def decode_choosing(self, token_id: int, head, choice: tuple) -> tuple[torch.Tensor, ...] | None:
        """`decode_one(token_id)` and the LM head's choice of the next token in one native call,
        where this decoder has one (`LlamaDecoder` on the int4 kernel, `LayeredDecoder` on the block
        kernel); None, having run nothing."""
        return None

    def _forward(self, input_ids: torch.Tensor, ids: list[int]) -> torch.Tensor:
        raise NotImplementedError

    def _forward_layers(self, input_ids: torch.Tensor, ids: list[int]) -> torch.Tensor:
        raise NotImplementedError
