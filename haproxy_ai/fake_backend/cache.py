"""A prefix cache like vLLM's automatic prefix caching, in prompt characters instead of tokens.

A prompt is cut into blocks of ``block_chars``; only whole blocks are cacheable, as in vLLM where
the partial last block is still being filled. Each block's key hashes its parent's key with its
own text, so a block can only hit when the entire prompt up to and including it matches: two
conversations that share a system prompt share those blocks and nothing after the first
difference. Pure and synchronous, so it is tested without a server.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["PrefixCache", "PromptBlocks"]

# 16 bytes keep collisions out of reach for any cache this fake will hold, and blake2b (unlike
# hash()) gives the same keys in every process, so runs are reproducible.
_DIGEST_SIZE = 16
_ROOT = b""


@dataclass(frozen=True, slots=True)
class PromptBlocks:
    """One prompt as the cache sees it: the chained keys of its whole blocks, and its size."""

    keys: tuple[bytes, ...]
    chars: int
    blocks: int  # blocks the prompt occupies in the KV cache, the partial last one included


class PrefixCache:
    """An LRU of block keys bounded by ``capacity_chars // block_chars`` blocks.

    ``queries`` and ``hits`` count blocks and only ever grow: they back Prometheus counters.
    Mutate from one thread (the backend's event loop).
    """

    def __init__(self, block_chars: int, capacity_chars: int) -> None:
        if block_chars < 1:
            raise ValueError(f"block_chars must be at least 1, got {block_chars}")
        if capacity_chars < 0:
            raise ValueError(f"capacity_chars must be 0 or more, got {capacity_chars}")
        self.block_chars = block_chars
        self.capacity = capacity_chars // block_chars
        self.queries = 0
        self.hits = 0
        # Value unused: an OrderedDict is the LRU (move_to_end on use, popitem(last=False) to evict).
        self._lru: OrderedDict[bytes, None] = OrderedDict()

    @property
    def blocks(self) -> int:
        """Blocks cached now."""
        return len(self._lru)

    def split(self, text: str) -> PromptBlocks:
        """Cut ``text`` into blocks and chain their keys; does not touch the cache."""
        size = self.block_chars
        keys: list[bytes] = []
        parent = _ROOT
        for start in range(0, len(text) - size + 1, size):
            digest = hashlib.blake2b(parent, digest_size=_DIGEST_SIZE)
            digest.update(text[start : start + size].encode("utf-8", "surrogatepass"))
            parent = digest.digest()
            keys.append(parent)
        return PromptBlocks(keys=tuple(keys), chars=len(text), blocks=-(-len(text) // size))

    def admit(self, prompt: PromptBlocks) -> int:
        """Schedule ``prompt``: return how many of its leading blocks were cached (the hits),
        then cache all its whole blocks as most recently used, evicting the least recent."""
        lru = self._lru
        hits = 0
        for key in prompt.keys:
            if key not in lru:
                break
            hits += 1
        self.queries += len(prompt.keys)
        self.hits += hits
        if self.capacity == 0:
            return hits
        # Only the last `capacity` blocks can survive this insert anyway; touching the earlier
        # ones first would just evict them again.
        for key in prompt.keys[-self.capacity :]:
            if key in lru:
                lru.move_to_end(key)
            else:
                lru[key] = None
        while len(lru) > self.capacity:
            lru.popitem(last=False)
        return hits

    def uncached_chars(self, prompt: PromptBlocks, hits: int) -> int:
        """Characters of ``prompt`` that prefill must compute after ``hits`` cached blocks."""
        return prompt.chars - hits * self.block_chars
