"""Running tokens through the model: prefill and decode-one over a KV cache we own.

A `TokenCache` keeps a KV cache and the ids whose keys and values it holds, side by side, so
the engine can reuse any prefix of the conversation (a new turn, a regenerate, a branch) by
cropping instead of recomputing. Only the final block's hidden state of the last position
comes back: the LM head (chatapp.lm_head) projects that one vector, never the whole prompt.

Two kinds: `chatapp.llama_decoder.LlamaDecoder`, our own fast decoder for Llama-family models,
and `KVState`, which runs any other model through transformers' modules with a DynamicCache.
`open_token_cache` picks one.
"""

from __future__ import annotations

import inspect

import torch

from chatapp.devices import input_device


class TokenCache:
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
    def decode_one(self, token_id: int) -> torch.Tensor:
        """Run one token; return its hidden state `(d_model,)`."""
        input_ids = torch.tensor([[token_id]], dtype=torch.long, device=self.device)  # (1, 1)
        return self._forward(input_ids, [token_id])

    def _forward(self, input_ids: torch.Tensor, ids: list[int]) -> torch.Tensor:
        raise NotImplementedError


class KVState(TokenCache):
    """Any transformers causal LM, run through its own modules with a DynamicCache."""

    kind = "transformers modules"

    def __init__(self, model) -> None:
        """Start empty for `model`."""
        super().__init__(model)
        self.backbone = model.base_model  # the transformer without its LM head
        self.reset()
        # transformers renamed `past_key_values` to `cache` during 5.x; accept both.
        params = inspect.signature(self.backbone.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"

    def keep(self, n: int) -> None:
        """Crop the cache to its first `n` tokens."""
        extra = len(self.token_ids) - n
        if extra > 0:
            self.cache.crop(-extra)
            del self.token_ids[n:]

    def reset(self) -> None:
        """Forget everything."""
        from transformers import DynamicCache

        self.cache = DynamicCache(config=self.model.config)
        self.token_ids = []

    def cache_bytes(self) -> int:
        """Memory the DynamicCache holds."""
        total = 0
        for layer in self.cache.layers:
            for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
                if tensor is not None:
                    total += tensor.numel() * tensor.element_size()
        return total

    def _forward(self, input_ids: torch.Tensor, ids: list[int]) -> torch.Tensor:
        start = len(self.token_ids)
        positions = torch.arange(start, start + len(ids), device=self.device)  # (T,)
        out = self.backbone(
            input_ids=input_ids,
            use_cache=True,
            position_ids=positions.unsqueeze(0),  # (1, T)
            **{self._cache_kwarg: self.cache},
        )
        self.token_ids.extend(ids)
        return out.last_hidden_state[0, -1]  # (d_model,)


def open_token_cache(model, fast: bool = True) -> TokenCache:
    """Our own decoder when it covers `model` (and `fast`), else transformers' modules."""
    from chatapp.llama_decoder import LlamaDecoder, unsupported_reason

    if fast and unsupported_reason(model) is None:
        return LlamaDecoder(model)
    return KVState(model)
