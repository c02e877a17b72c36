"""Off-chain content: encrypted, content-addressed chunks and manifests.

``ChunkStore`` is the interface later backends (erasure-coded shards across
institutions, S3) implement; ``LocalChunkStore`` keeps chunks in the node's data
directory.
"""

from medledger.storage.chunkstore import ChunkStore, LocalChunkStore
from medledger.storage.manifest import ChunkRef, Manifest

__all__ = ["ChunkRef", "ChunkStore", "LocalChunkStore", "Manifest"]
