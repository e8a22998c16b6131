"""Which decoder runs a model, decided in one place.

`LlamaDecoder` (our own, with fused products, preallocated KV buffers and chatapp's kernel) is
several times faster, but covers only the Llama-family configurations it reproduces exactly;
`llama_decoder.unsupported_reason` says why one is not covered. Everything else, and every model
when `fast` is off (the parity tests' reference), runs through transformers' own modules.
"""

from __future__ import annotations

from chatapp.runtime.decoder import Decoder
from chatapp.runtime.llama_decoder import LlamaDecoder, unsupported_reason
from chatapp.runtime.transformers_decoder import TransformersDecoder


def open_decoder(model, fast: bool = True) -> Decoder:
    """Our own decoder when it covers `model` (and `fast`), else transformers' modules."""
    if fast and unsupported_reason(model) is None:
        return LlamaDecoder(model)
    return TransformersDecoder(model)
