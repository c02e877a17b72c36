"""One exception tree for all of MedLedger.

Every error carries a stable, machine-readable ``code`` (``UPPER_SNAKE``) and a
message that is safe to show to any caller: it never contains patient data
(library text is passed on only where it names types and positions, as msgspec's
validation errors do). Errors are mapped once, at the edge, to an
HTTP status (``api``) or to ``error: CODE: message`` on stderr (``cli``).

::

    MedLedgerError
    ├── InvalidInput            400  malformed or oversized input
    │   ├── DecodeError              bytes that are not a valid encoding
    │   └── InvalidTransaction       a transaction the ledger rejects
    ├── AuthError               401  bad signature, unknown or suspended identity
    ├── Forbidden               403  access denied by policy
    ├── NotFound                404  unknown record, block, chunk, identity
    ├── Conflict                409  replayed nonce, duplicate object
    ├── IntegrityError          500  stored data does not match its hash
    ├── Unavailable             503  node not ready, timeouts
    └── NodeError               500  a configuration or internal failure
"""

from __future__ import annotations

from typing import Any, ClassVar


class MedLedgerError(Exception):
    """Root of every MedLedger error."""

    http_status: ClassVar[int] = 500
    default_code: ClassVar[str] = "INTERNAL"

    def __init__(self, message: str, *, code: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            out["details"] = self.details
        return out

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class InvalidInput(MedLedgerError):
    http_status = 400
    default_code = "INVALID_INPUT"


class DecodeError(InvalidInput):
    default_code = "DECODE_ERROR"


class InvalidTransaction(InvalidInput):
    default_code = "TX_INVALID"


class AuthError(MedLedgerError):
    http_status = 401
    default_code = "AUTH_FAILED"


class Forbidden(MedLedgerError):
    http_status = 403
    default_code = "ACCESS_DENIED"


class NotFound(MedLedgerError):
    http_status = 404
    default_code = "NOT_FOUND"


class Conflict(MedLedgerError):
    http_status = 409
    default_code = "CONFLICT"


class IntegrityError(MedLedgerError):
    http_status = 500
    default_code = "INTEGRITY_ERROR"


class Unavailable(MedLedgerError):
    http_status = 503
    default_code = "UNAVAILABLE"


class NodeError(MedLedgerError):
    http_status = 500
    default_code = "NODE_ERROR"


_BY_STATUS: dict[int, type[MedLedgerError]] = {
    400: InvalidInput,
    401: AuthError,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    503: Unavailable,
}


def from_wire(status: int, code: str, message: str) -> MedLedgerError:
    """Rebuild a typed error from an API error response (used by clients)."""
    cls = _BY_STATUS.get(status, MedLedgerError)
    return cls(message, code=code)
