"""Which decoder runs a model, decided in one place.

`LlamaDecoder` (our own, with fused products, preallocated KV buffers and chatapp's int4
kernel) is several times faster, but covers only the Llama-family configurations it reproduces
exactly, with float or int4 weights; `llama_decoder.unsupported_reason` says why one is not
covered. `LayeredDecoder` runs the common architectures (Llama, Qwen2/3, Phi-3, Gemma 2/3) with
the model's own modules, whatever their weights (GGUF blocks included), and its own KV buffers
and attention; `layered_decoder.plan_reason` says why one is not covered. Everything else, and
every model when `fast` is off (the parity tests' reference), runs through transformers' own
modules.
"""

from __future__ import annotations

from chatapp.runtime.decoder import Decoder
from chatapp.runtime.layered_decoder import LayeredDecoder, plan_reason
from chatapp.runtime.llama_decoder import LlamaDecoder, unsupported_reason
from chatapp.runtime.transformers_decoder import TransformersDecoder


def open_decoder(model, fast: bool = True) -> Decoder:
    """Our own decoder when one covers `model` (and `fast`), else transformers' modules."""
    if fast and unsupported_reason(model) is None:
        return LlamaDecoder(model)
    if fast and plan_reason(model) is None:
        return LayeredDecoder(model)
    return TransformersDecoder(model)
