"""Manifests of stored records.

``ContentManifest`` is what the client builds while it encrypts: chunk CIDs and
sizes, cipher and chunking. The node that receives the upload adds the layout
(erasure code, parity shard CIDs, initial placement, Merkle root over all
shards) and stores the resulting ``Manifest`` with the shards; the manifest's
CID and the shard root are anchored in the record's on-chain entry.

Shards are addressed by ``(stripe, column)``: stripe ``s`` holds chunks
``s*k .. s*k+k-1`` in columns ``0..k-1`` and its parity shards in columns
``k..k+m-1``. A short last stripe has fewer data shards. The Merkle leaves are
the shards' SHA-256 digests in stripe-major, column order, skipping the
implicit zero columns of a short last stripe.
"""

from __future__ import annotations

import msgspec

from medledger.codec import Record, decode_canonical, encode
from medledger.crypto.cid import cid_for, cid_to_digest, is_cid
from medledger.errors import InvalidInput
from medledger.ledger.merkle import inclusion_proof, leaf_hash, merkle_root
from medledger.storage.erasure import MAX_K, MAX_M, shard_count, stripe_count

DEFAULT_CHUNK_SIZE = 256 * 1024
MAX_CHUNK_SIZE = 4 * 1024 * 1024
CIPHER = "aes-256-gcm/v1"
CODEC = "zfec/v1"
MANIFEST_VERSION = 2
MAX_NAME_LEN = 64


class ChunkRef(Record, frozen=True):
    cid: str
    size: int  # ciphertext bytes


class ContentManifest(Record, frozen=True):
    version: int
    cipher: str
    chunk_size: int  # plaintext bytes per chunk (last may be shorter)
    size: int  # plaintext bytes in all
    chunks: list[ChunkRef]

    def encode(self) -> bytes:
        return encode(self)

    def validate(self) -> None:
        if self.version != MANIFEST_VERSION or self.cipher != CIPHER:
            raise InvalidInput("unsupported manifest version or cipher", code="BAD_MANIFEST")
        validate_chunks(self.chunk_size, self.size, self.chunks)


def validate_chunks(chunk_size: int, size: int, chunks: list[ChunkRef]) -> None:
    if not 0 < chunk_size <= MAX_CHUNK_SIZE:
        raise InvalidInput("manifest chunk size out of range", code="BAD_MANIFEST")
    expected = -(-size // chunk_size) if size else 0
    if size < 0 or len(chunks) != expected:
        raise InvalidInput("manifest chunk count does not match its size", code="BAD_MANIFEST")
    for i, ref in enumerate(chunks):
        if not is_cid(ref.cid):
            raise InvalidInput("manifest holds a bad chunk CID", code="BAD_MANIFEST")
        plain = chunk_size if i < expected - 1 else size - chunk_size * i
        if ref.size != plain + 16:
            raise InvalidInput("manifest chunk size is inconsistent", code="BAD_MANIFEST")


class Manifest(Record, frozen=True):
    version: int
    cipher: str
    chunk_size: int
    size: int
    chunks: list[ChunkRef]
    codec: str
    k: int
    m: int
    parity: list[ChunkRef]  # m per stripe, stripe-major
    placement: list[str]  # institution holding each column at upload time
    shard_root: bytes  # Merkle root over all shards

    def encode(self) -> bytes:
        return encode(self)

    def cid(self) -> str:
        return cid_for(self.encode())

    @property
    def width(self) -> int:
        return self.k + self.m

    @property
    def stripes(self) -> int:
        return stripe_count(len(self.chunks), self.k)

    def data_in(self, stripe: int) -> int:
        """How many data shards stripe ``stripe`` holds (k except maybe the last)."""
        return min(self.k, len(self.chunks) - stripe * self.k)

    def shard(self, stripe: int, column: int) -> ChunkRef | None:
        """The shard at ``(stripe, column)``, or None for an implicit zero column."""
        if column < self.k:
            i = stripe * self.k + column
            return self.chunks[i] if column < self.data_in(stripe) else None
        return self.parity[stripe * self.m + column - self.k]

    def sizes(self, stripe: int) -> list[int]:
        """Stored length of every column of ``stripe`` (0 for implicit zero columns)."""
        out = []
        for c in range(self.width):
            ref = self.shard(stripe, c)
            out.append(0 if ref is None else ref.size)
        return out

    def column(self, column: int) -> list[ChunkRef | None]:
        return [self.shard(s, column) for s in range(self.stripes)]

    def leaf_index(self, stripe: int, column: int) -> int:
        base = stripe * self.width
        if column < self.k:
            return base + column
        return base + self.data_in(stripe) + column - self.k

    def leaves(self) -> list[bytes]:
        """The Merkle leaves: every stored shard's SHA-256 digest, in leaf order."""
        out: list[bytes] = []
        for s in range(self.stripes):
            for c in range(self.width):
                ref = self.shard(s, c)
                if ref is not None:
                    out.append(cid_to_digest(ref.cid))
        return out

    def shard_count(self) -> int:
        return shard_count(len(self.chunks), self.k, self.m)

    def hashed_leaves(self) -> list[bytes]:
        return [leaf_hash(x) for x in self.leaves()]

    def proof(self, stripe: int, column: int, hashed: list[bytes] | None = None) -> list[bytes]:
        """Merkle path of a shard's leaf to ``shard_root`` (``hashed``: the
        ``hashed_leaves()`` of this manifest, when the caller keeps them)."""
        if hashed is None:
            hashed = self.hashed_leaves()
        return inclusion_proof(hashed, self.leaf_index(stripe, column))

    def stored_bytes(self) -> int:
        return sum(r.size for r in self.chunks) + sum(r.size for r in self.parity)

    def validate(self) -> None:
        if self.version != MANIFEST_VERSION or self.cipher != CIPHER or self.codec != CODEC:
            raise InvalidInput("unsupported manifest version, cipher or codec", code="BAD_MANIFEST")
        validate_chunks(self.chunk_size, self.size, self.chunks)
        if not 1 <= self.k <= MAX_K or not 0 <= self.m <= MAX_M:
            raise InvalidInput("manifest erasure parameters out of range", code="BAD_MANIFEST")
        if len(self.placement) != self.width or len(set(self.placement)) != self.width:
            raise InvalidInput(
                "manifest placement must name k+m distinct institutions", code="BAD_MANIFEST"
            )
        if any(not 0 < len(p) <= MAX_NAME_LEN for p in self.placement):
            raise InvalidInput("manifest placement names are malformed", code="BAD_MANIFEST")
        if len(self.parity) != self.stripes * self.m:
            raise InvalidInput("manifest parity count is inconsistent", code="BAD_MANIFEST")
        for s in range(self.stripes):
            width = max(r.size for r in self.chunks[s * self.k : s * self.k + self.k])
            for ref in self.parity[s * self.m : (s + 1) * self.m]:
                if not is_cid(ref.cid) or ref.size != width:
                    raise InvalidInput("manifest holds a bad parity shard", code="BAD_MANIFEST")
        if self.shard_root != merkle_root(self.leaves()):
            raise InvalidInput("manifest shard root does not match its shards", code="BAD_MANIFEST")


def build_manifest(
    content: ContentManifest, k: int, m: int, parity: list[ChunkRef], placement: list[str]
) -> Manifest:
    draft = Manifest(
        version=MANIFEST_VERSION,
        cipher=content.cipher,
        chunk_size=content.chunk_size,
        size=content.size,
        chunks=content.chunks,
        codec=CODEC,
        k=k,
        m=m,
        parity=parity,
        placement=placement,
        shard_root=b"",
    )
    full = msgspec.structs.replace(draft, shard_root=merkle_root(draft.leaves()))
    full.validate()
    return full


def decode_manifest(data: bytes) -> Manifest:
    try:
        m = decode_canonical(data, Manifest)
    except InvalidInput as exc:
        raise InvalidInput(f"manifest is malformed: {exc.message}", code="BAD_MANIFEST")
    m.validate()
    return m


def decode_content_manifest(data: bytes) -> ContentManifest:
    try:
        m = decode_canonical(data, ContentManifest)
    except InvalidInput as exc:
        raise InvalidInput(f"content manifest is malformed: {exc.message}", code="BAD_MANIFEST")
    m.validate()
    return m
