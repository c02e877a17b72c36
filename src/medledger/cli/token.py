"""``medledger token issue``: a short-lived bearer token for DICOMweb and FHIR clients.

Standard DICOMweb and FHIR clients cannot sign MedLedger requests. The token is a
delegation signed here with the identity's key (which never leaves this machine) to
the node's DICOM gateway: that node, and only it, then acts for the identity on
``/dicom-web`` and ``/fhir`` (reads are committed as the identity's own access events,
decided by the same policy), for the scopes given and until it expires. Send it as
``Authorization: Bearer TOKEN``, over TLS. Anyone holding it can use it until then:
keep lifetimes short.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from medledger.app.delegation import MAX_LIFETIME_MS, SCOPE_READ, SCOPES
from medledger.cli.common import AsOpt, JsonOpt, NodeOpt, client_for, emit
from medledger.errors import InvalidInput

app = typer.Typer(help="Bearer tokens for DICOMweb and FHIR clients.", no_args_is_help=True)

_UNITS = {"s": 1000, "m": 60_000, "h": 3_600_000}
_TTL = re.compile(r"([1-9][0-9]{0,6})([smh])")


def parse_ttl(text: str) -> int:
    """``90s``, ``15m``, ``8h`` as milliseconds (at most 24 h)."""
    match = _TTL.fullmatch(text.strip())
    if match is None:
        raise InvalidInput("a lifetime is a number and s, m or h, such as 15m", code="BAD_TTL")
    ms = int(match.group(1)) * _UNITS[match.group(2)]
    if ms > MAX_LIFETIME_MS:
        raise InvalidInput("a token lives at most 24h", code="TOKEN_LIFETIME")
    return ms


@app.command("issue")
def issue(
    ttl: Annotated[str, typer.Option(help="Lifetime: 90s, 15m, 8h (at most 24h).")] = "1h",
    scope: Annotated[
        str,
        typer.Option(
            help=f"Comma-separated scopes: {', '.join(SCOPES)} (read: queries and reads; "
            "consent: grant and revoke consents; enroll: enroll patients, admins only; "
            "write: store records, such as a FHIR DocumentReference)."
        ),
    ] = SCOPE_READ,
    node: NodeOpt = "",
    as_key: AsOpt = Path("key"),
    as_json: JsonOpt = False,
) -> None:
    """Print a bearer token for this identity, valid at NODE only."""
    lifetime = parse_ttl(ttl)
    scopes = [s.strip() for s in scope.split(",") if s.strip()]
    with client_for(node, as_key) as c:
        token = c.issue_token(scopes, lifetime)
        doc = {
            "token": token,
            "identity": c.key.id,
            "scopes": sorted(set(scopes)),
            "expires_in_s": lifetime // 1000,
        }
    emit(doc, as_json, lambda: typer.echo(token))
