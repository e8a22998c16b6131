"""Where the model runs: decoders that own a KV cache, and the kernels under them.

A decoder (`decoder.Decoder`) prefills tokens and decodes one at a time, returning only the
last position's hidden state for the LM head (or, on a kernel, `decode_choosing`: the step and
the LM head's choice in one native call); `decoder_choice.open_decoder` picks the variant and
says why:
- `llama_decoder` (with `layer_loop`): our own decoder for Llama-family models (on a GPU, its
  decode step replayed from a CUDA graph: `captured_step`);
- `layered_decoder` (with `layer_step`): GGUF-native models' layers over their own modules;
- `transformers_decoder`: any other model, through transformers' modules.
Under them: `quantize` (int4 linears and the int4 LM head), `int4_kernel` (chatapp's own C++
kernel, compiled at run time from `kernels/`; a prefill's products on AMX-INT8 tiles in
`kernels/amx_int4.h`), `kernel_switch` (when a decoder moves onto it),
and `devices` (device, dtype and placement). `block_weights` holds weights in GGUF's own block
quantization, in three layouts exact for every common block type; `block_linear` computes linear
layers and embeddings from them, on `block_kernel` (chatapp's block kernel, built per
instruction set from `kernels/block_linear.cpp`) or in plain torch. Both kernels share
`kernels/lm_head_steps.h` (the LM head's steps in C++) and `kernels/attention.h`.

May import: torch, transformers, accelerate, `chatapp.chat` and `chatapp.support`.
"""
