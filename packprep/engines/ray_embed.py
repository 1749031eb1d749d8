"""Embed on Ray: the actor that ``ray_engine.embed_on_ray`` pools.

Each actor holds the model and embeds the local engine's chunks (4096 documents each), so
every batch has the same composition and the same floats.
"""

from __future__ import annotations

import numpy as np

from packprep.config import EmbedConfig
from packprep.store import DocStore


class EmbedWorker:
    """Ray actor: the model and the memmapped store, loaded once per worker."""

    def __init__(self, store_path: str, config: EmbedConfig, threads: int):
        import torch

        from packprep.stages.embed import load_embedder
        from packprep.tokenizers import tokenizer_from_manifest

        torch.set_num_threads(threads)
        self.store = DocStore.open(store_path)
        self.embedder = load_embedder(config.model)
        self.decode = tokenizer_from_manifest(self.store.manifest["tokenizer"]).decode
        self.config = config

    def embed(self, first: int, end: int) -> tuple[int, np.ndarray]:
        from packprep.stages.embed import embed_documents

        vectors = np.empty((end - first, self.embedder.dim), dtype=np.dtype(self.config.dtype))
        embed_documents(
            self.embedder, self.decode, self.store.tokens, self.store.offsets, np.arange(first, end),
            out=vectors, max_tokens=self.config.embed_tokens, batch_size=self.config.batch_size, chunk=end - first,
        )
        return first, vectors
