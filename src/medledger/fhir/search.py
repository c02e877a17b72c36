"""FHIR search parameters: which ones each resource takes, and how values parse.

An unknown parameter (or a modifier such as ``:exact``) is refused with 400
``UNKNOWN_SEARCH_PARAM`` rather than ignored (FHIR lets a server ignore them, but a
client that filtered by one would then see more than it asked for, silently).
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from medledger.errors import InvalidInput

DEFAULT_COUNT = 100
MAX_COUNT = 1000
COMMON = frozenset({"_count", "_format"})
SEARCH_PARAMS: dict[str, frozenset[str]] = {
    "Patient": frozenset({"_id", "identifier"}),
    "DocumentReference": frozenset({"_id", "patient", "subject", "type", "date"}),
    "ImagingStudy": frozenset({"_id", "patient", "subject", "identifier", "started"}),
    "Consent": frozenset({"_id", "patient", "status"}),
    "AuditEvent": frozenset({"patient", "date"}),
    "Provenance": frozenset({"target"}),
}
JSON_FORMATS = frozenset({"json", "application/json", "application/fhir+json"})
_PREFIXES = ("eq", "ne", "lt", "le", "gt", "ge", "sa", "eb")
_DATE_RE = re.compile(
    r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?"
    r"(Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


def bad(message: str, code: str = "BAD_SEARCH_PARAM") -> InvalidInput:
    return InvalidInput(message, code=code)


@dataclass(frozen=True, slots=True)
class DateCondition:
    prefix: str
    lo_ms: int  # the value's range [lo, hi) at its precision
    hi_ms: int

    def matches(self, t: int) -> bool:
        p = self.prefix
        if p == "eq":
            return self.lo_ms <= t < self.hi_ms
        if p == "ne":
            return not self.lo_ms <= t < self.hi_ms
        if p in ("lt", "eb"):
            return t < self.lo_ms
        if p == "le":
            return t < self.hi_ms
        if p in ("gt", "sa"):
            return t >= self.hi_ms
        return t >= self.lo_ms  # ge


def parse_date(value: str) -> DateCondition:
    prefix = value[:2] if value[:2] in _PREFIXES else "eq"
    text = value[2:] if value[:2] in _PREFIXES else value
    m = _DATE_RE.match(text)
    if m is None:
        raise bad(f"not a FHIR date search value: {value!r}"[:120])
    year, month, day, hh, _mm, ss, _zone = m.groups()
    try:
        if month is None:
            lo = datetime(int(year), 1, 1, tzinfo=UTC)
            hi = datetime(int(year) + 1, 1, 1, tzinfo=UTC)
        elif day is None:
            lo = datetime(int(year), int(month), 1, tzinfo=UTC)
            days = calendar.monthrange(int(year), int(month))[1]
            hi_ts = lo.timestamp() + days * 86400
            hi = datetime.fromtimestamp(hi_ts, tz=UTC)
        elif hh is None:
            lo = datetime(int(year), int(month), int(day), tzinfo=UTC)
            hi = datetime.fromtimestamp(lo.timestamp() + 86400, tz=UTC)
        else:
            lo = datetime.fromisoformat(text.replace("Z", "+00:00"))
            if lo.tzinfo is None:
                lo = lo.replace(tzinfo=UTC)
            step = 1 if ss is not None else 60
            hi = datetime.fromtimestamp(lo.timestamp() + step, tz=UTC)
    except ValueError:
        raise bad(f"not a valid date: {value!r}"[:120])
    return DateCondition(prefix, int(lo.timestamp() * 1000), int(hi.timestamp() * 1000))


def dates_match(conditions: Sequence[DateCondition], t: int) -> bool:
    return all(c.matches(t) for c in conditions)


@dataclass(frozen=True, slots=True)
class Query:
    params: Mapping[str, list[str]]  # name -> values (a repeated parameter: several)
    count: int

    def one(self, name: str) -> str | None:
        values = self.params.get(name)
        if not values:
            return None
        if len(values) > 1:
            raise bad(f"{name} may be given once")
        return values[0]

    def any_of(self, name: str) -> list[str] | None:
        """Comma-separated alternatives of a parameter given once (None: not given)."""
        value = self.one(name)
        return None if value is None else [v for v in value.split(",") if v]

    def dates(self, name: str) -> list[DateCondition]:
        return [parse_date(v) for v in self.params.get(name, [])]


def parse_query(resource: str, items: Iterable[tuple[str, str]]) -> Query:
    allowed = SEARCH_PARAMS[resource] | COMMON
    params: dict[str, list[str]] = {}
    for name, value in items:
        if name not in allowed:
            raise bad(
                f"{resource} does not support the search parameter {name!r}; supported: "
                + ", ".join(sorted(SEARCH_PARAMS[resource])),
                code="UNKNOWN_SEARCH_PARAM",
            )
        params.setdefault(name, []).append(value)
    query = Query(params, DEFAULT_COUNT)
    fmt = query.one("_format")
    if fmt is not None and fmt not in JSON_FORMATS:
        raise bad("only JSON is served (_format=json)", code="UNSUPPORTED_FORMAT")
    count = query.one("_count")
    if count is not None:
        if not count.isdigit() or not 0 <= int(count) <= MAX_COUNT:
            raise bad(f"_count must be between 0 and {MAX_COUNT}")
        query = Query(params, int(count))
    return query


def token(value: str) -> tuple[str | None, str]:
    """``system|code`` → (system, code); ``code`` → (None, code); ``|code`` → ("", code)."""
    if "|" in value:
        system, code = value.split("|", 1)
        return system, code
    return None, value


def reference(value: str, resource: str) -> str:
    """``ID`` or ``Resource/ID`` (or a full URL ending in it) → ``ID``."""
    parts = value.rstrip("/").split("/")
    if len(parts) >= 2:
        if parts[-2] != resource:
            raise bad(f"expected a {resource} reference")
        return parts[-1]
    return value
