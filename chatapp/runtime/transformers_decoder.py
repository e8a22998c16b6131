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

    def _forward_layers(self, input_ids: torch.Tensor, ids: list[int]) -> torch.Tensor:
        layers, final_norm = lens_modules(self.backbone)
        outputs: list[torch.Tensor] = []

        def keep(module, args, output) -> None:
            hidden = output[0] if isinstance(output, tuple) else output  # (1, T, d_model)
            outputs.append(hidden[0, -1])

        hooks = [layer.register_forward_hook(keep) for layer in layers]
        try:
            last = self._forward(input_ids, ids)  # (d_model,)
        finally:
            for hook in hooks:
                hook.remove()
        # The last layer's row is the backbone's own output: the step's context vector, exactly.
        earlier = final_norm(torch.stack(outputs[:-1])) if len(outputs) > 1 else last.new_zeros(0, last.shape[-1])
        return torch.cat([earlier.to(last.dtype), last.unsqueeze(0)])  # (layers, d_model)

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


LAYER_LISTS = ("layers", "h", "blocks")
"""Where transformers' backbones keep their decoder layers (GPT-2's are `h`)."""
FINAL_NORMS = ("norm", "ln_f", "final_layernorm", "final_layer_norm", "norm_f")
"""What they call the norm after the last layer."""


def lens_modules(backbone) -> tuple[torch.nn.ModuleList, torch.nn.Module]:
    """The decoder layers of `backbone` and its final norm, for the logit lens; ValueError (one
    line) for an architecture that keeps them under other names."""
    for module in [backbone, *backbone.children()]:  # OPT-style backbones nest them one level down
        layers = next((getattr(module, n) for n in LAYER_LISTS if isinstance(getattr(module, n, None), torch.nn.ModuleList)), None)
        norm = next((getattr(module, n) for n in FINAL_NORMS if isinstance(getattr(module, n, None), torch.nn.Module)), None)
        if layers is not None and norm is not None:
            return layers, norm
    raise ValueError(f"the logit lens does not know where {type(backbone).__name__} keeps its layers and final norm")
