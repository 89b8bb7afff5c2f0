"""A small paged-KV server on `transformers` models that embeds thaw (see README.md)."""
