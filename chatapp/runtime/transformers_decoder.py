"""Any transformers causal LM as a `Decoder`: its own modules, with transformers' DynamicCache.

The general path: whatever architecture transformers knows runs here, at transformers' speed.
"""

from __future__ import annotations

import inspect

import torch

from chatapp.runtime.decoder import Decoder


class TransformersDecoder(Decoder):
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
