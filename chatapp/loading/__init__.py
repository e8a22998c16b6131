"""From a `--model` spec to a loaded model and tokenizer, without the network.

- `models`: `load_model`, the only `from_pretrained` (the default GGUF, folders, `.gguf` files,
  the local Hugging Face cache);
- `model_source`: where a `--model` value is read from, and a GGUF file's converted config and
  tokenizer (or its whole float copy) in the user cache, made the first time;
- `gguf_files`: GGUF files and their converted copies (or only their config and tokenizer) in
  the user cache;
- `gguf_index`: a GGUF file's metadata and tensor table, read fast, its tensors as views of a
  memory map;
- `gguf_blocks`: a GGUF tensor's raw blocks read exactly into `chatapp.runtime.block_weights`;
- `gguf_native`: a model built straight from a GGUF file, its weights kept in their blocks, on
  `plain_model`'s plain torch modules for the common architectures (no transformers model code);
- `int4_file_cache`: the packed int4 model kept on disk for warm starts, loaded into
  `plain_llama`'s plain torch modules with `chat_tokenizer`'s tokenizer (no transformers import).

May import: `chatapp.runtime`, `chatapp.chat` and `chatapp.support`.
"""
