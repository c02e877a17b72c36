"""Delegations: an identity lets one node's gateway act for it, briefly (ADR 0008).

Standard DICOMweb and FHIR clients cannot sign MedLedger requests or transactions.
So an identity signs, with its own key, a short-lived **delegation** naming the node's
gateway identity as its delegate, the scopes it grants and an expiry. The delegation
is the bearer token such a client sends (``Authorization: Bearer mlt1.<base64url>``).

The node checks the token per request (signature, chain, delegate, expiry, the
identity still active) and, for what needs the ledger, has its gateway key sign the
transaction with the token inside (the ``delegation`` field of ``record.read``,
``consent.grant``, ``consent.revoke``, ``identity.enroll``, ``record.register``). The chain then checks the
delegation again, against the block time, and executes the transaction **as the
grantor**: the policy decides for the token's identity, and the event's actor is that
identity (its detail names the gateway). So a token gives the node nothing the
identity could not do itself, only for its scopes and until it expires, and only to
the one node it names.

Pure and deterministic: no clock (the caller passes the time), no I/O.
"""

from __future__ import annotations

import base64
import binascii
import secrets

from medledger.codec import Record, decode_canonical, encode
from medledger.crypto.keys import PUBLIC_KEY_SIZE, PrivateKey, PublicKey, identity_id_for
from medledger.errors import AuthError, Forbidden, MedLedgerError

DELEGATION_DOMAIN = b"medledger/delegation/v1\x00"
TOKEN_PREFIX = "mlt1."

SCOPE_READ = "read"  # queries, and record.read for the identity (WADO-RS, FHIR reads)
SCOPE_CONSENT = "consent"  # consent.grant / consent.revoke (FHIR Consent create, delete)
SCOPE_ENROLL = "enroll"  # identity.enroll (FHIR Patient create, by an admin)
SCOPE_WRITE = "write"  # record.register (FHIR DocumentReference create)
SCOPES = (SCOPE_READ, SCOPE_CONSENT, SCOPE_ENROLL, SCOPE_WRITE)

MAX_LIFETIME_MS = 24 * 3600 * 1000  # a delegation outliving a day is refused
DEFAULT_LIFETIME_MS = 3600 * 1000
MAX_TOKEN_BYTES = 1024
CLOCK_SKEW_MS = 5 * 60 * 1000  # a token "issued" this far in the future is still taken


class Delegation(Record, frozen=True):
    chain_id: str
    grantor: str  # the identity that delegates (its ID derives from grantor_key)
    grantor_key: bytes  # Ed25519 public key, 32 bytes
    delegate: str  # the gateway identity of the one node that may act
    scopes: list[str]  # sorted, from SCOPES
    issued_ms: int
    expires_ms: int
    nonce: bytes  # 16 random bytes: two tokens never coincide


class SignedDelegation(Record, frozen=True):
    delegation: bytes  # canonical encoding of Delegation
    signature: bytes  # Ed25519 by grantor_key over DELEGATION_DOMAIN || delegation


def issue(
    key: PrivateKey,
    *,
    chain_id: str,
    delegate: str,
    scopes: list[str],
    now_ms: int,
    lifetime_ms: int = DEFAULT_LIFETIME_MS,
) -> bytes:
    """A signed delegation (the token's bytes) from ``key``'s identity to ``delegate``."""
    wanted = sorted(set(scopes))
    unknown = [s for s in wanted if s not in SCOPES]
    if not wanted or unknown:
        raise AuthError(
            f"scopes must be some of {', '.join(SCOPES)} (got {', '.join(scopes) or 'none'})",
            code="TOKEN_SCOPE",
        )
    if not 0 < lifetime_ms <= MAX_LIFETIME_MS:
        raise AuthError("a token lives at most 24 hours", code="TOKEN_LIFETIME")
    body = encode(
        Delegation(
            chain_id=chain_id,
            grantor=key.id,
            grantor_key=key.public_key.raw,
            delegate=delegate,
            scopes=wanted,
            issued_ms=now_ms,
            expires_ms=now_ms + lifetime_ms,
            nonce=secrets.token_bytes(16),
        )
    )
    return encode(SignedDelegation(delegation=body, signature=key.sign(DELEGATION_DOMAIN + body)))


def parse(raw: bytes) -> Delegation:
    """Decode a signed delegation and verify its signature (``TOKEN_INVALID``)."""
    if not raw or len(raw) > MAX_TOKEN_BYTES:
        raise AuthError("the token is empty or too long", code="TOKEN_INVALID")
    try:
        signed = decode_canonical(raw, SignedDelegation)
        d = decode_canonical(signed.delegation, Delegation)
    except MedLedgerError:
        raise AuthError("the token is malformed", code="TOKEN_INVALID")
    if len(d.grantor_key) != PUBLIC_KEY_SIZE or identity_id_for(d.grantor_key) != d.grantor:
        raise AuthError("the token's key is not its grantor's", code="TOKEN_INVALID")
    try:
        PublicKey(d.grantor_key).verify(DELEGATION_DOMAIN + signed.delegation, signed.signature)
    except MedLedgerError:
        raise AuthError("the token's signature does not verify", code="TOKEN_INVALID")
    if d.scopes != sorted(set(d.scopes)) or any(s not in SCOPES for s in d.scopes):
        raise AuthError("the token's scopes are malformed", code="TOKEN_INVALID")
    return d


def check(d: Delegation, *, chain_id: str, delegate: str, scope: str, now_ms: int) -> None:
    """Refuse a delegation that is not for this chain and delegate, this scope, now."""
    if d.chain_id != chain_id:
        raise AuthError("the token is for another chain", code="TOKEN_INVALID")
    if d.delegate != delegate:
        raise AuthError("the token was issued for another node", code="TOKEN_WRONG_NODE")
    if d.expires_ms - d.issued_ms > MAX_LIFETIME_MS or d.expires_ms <= d.issued_ms:
        raise AuthError("the token's lifetime is invalid", code="TOKEN_INVALID")
    if now_ms >= d.expires_ms:
        raise AuthError("the token has expired; issue a new one", code="TOKEN_EXPIRED")
    if now_ms + CLOCK_SKEW_MS < d.issued_ms:
        raise AuthError("the token is not valid yet", code="TOKEN_INVALID")
    if scope not in d.scopes:
        raise Forbidden(f"the token does not carry the scope {scope!r}", code="TOKEN_SCOPE")


def verify(raw: bytes, *, chain_id: str, delegate: str, scope: str, now_ms: int) -> Delegation:
    d = parse(raw)
    check(d, chain_id=chain_id, delegate=delegate, scope=scope, now_ms=now_ms)
    return d


def token_text(raw: bytes) -> str:
    """The bearer token as sent in ``Authorization: Bearer``."""
    return TOKEN_PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def token_bytes(text: str) -> bytes:
    """The signed delegation inside a bearer token (``TOKEN_INVALID`` if it is not one)."""
    if not text.startswith(TOKEN_PREFIX) or len(text) > 2 * MAX_TOKEN_BYTES:
        raise AuthError("not a MedLedger bearer token", code="TOKEN_INVALID")
    b64 = text[len(TOKEN_PREFIX) :]
    try:
        return base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4))
    except (binascii.Error, ValueError):
        raise AuthError("not a MedLedger bearer token", code="TOKEN_INVALID")
