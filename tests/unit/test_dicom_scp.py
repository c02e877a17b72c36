"""The DICOM SCP over loopback with pynetdicom as the caller: who gets in, and C-ECHO.

The SCP is real (pynetdicom, a TCP port on 127.0.0.1); its authorizer here is a plain
function, so the refusals that need no ledger (and the fail-closed path) are shown
without a node. The ledger side runs in tests/integration/test_dicom_scp.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from structlog.testing import capture_logs

from medledger.dicom.scp import DicomSCP, Verdict

NODE_AE = "HOSPITAL-A"
RULES = {
    "CT_1": Verdict(True, "allowed", "mlservice"),
    "SUSPENDED": Verdict(False, "identity_suspended", "mlgone"),
    "BUSY": Verdict(False, "node_busy", "mlbusy", transient=True),
}


def authorize(calling_ae: str) -> Verdict:
    if calling_ae == "EXPLODES":
        raise RuntimeError("the authorizer failed")
    return RULES.get(calling_ae, Verdict(False, "unknown_calling_ae"))


@pytest.fixture
def scp() -> Iterator[DicomSCP]:
    server = DicomSCP("127.0.0.1", 0, NODE_AE, authorize)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def associate(scp: DicomSCP, calling: str, called: str = NODE_AE) -> Association:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.acse_timeout = 10
    return ae.associate("127.0.0.1", scp.bound_port, ae_title=called)


def rejection(assoc: Association) -> tuple[int, int, int]:
    assert assoc.is_rejected and not assoc.is_established
    rj: Any = assoc.acceptor.primitive
    return rj.result, rj.result_source, rj.diagnostic


def test_an_allowed_caller_echoes(scp: DicomSCP) -> None:
    with capture_logs() as logs:
        assoc = associate(scp, "CT_1")
        assert assoc.is_established
        status = assoc.send_c_echo()
        assert status.Status == 0x0000
        assoc.release()
    events = {e["event"]: e for e in logs}
    assert events["dicom.association_accepted"]["identity"] == "mlservice"
    assert events["dicom.echo"] == {
        "event": "dicom.echo",
        "log_level": "info",
        "calling_ae": "CT_1",
        "identity": "mlservice",
    }


@pytest.mark.parametrize(
    ("calling", "called", "expected", "reason"),
    [
        ("NOBODY", NODE_AE, (1, 1, 3), "unknown_calling_ae"),
        ("SUSPENDED", NODE_AE, (1, 1, 3), "identity_suspended"),
        ("CT_1", "SOMEONE-ELSE", (1, 1, 7), "called_ae_mismatch"),
        ("BUSY", NODE_AE, (2, 3, 1), "node_busy"),
        ("EXPLODES", NODE_AE, (2, 3, 1), "authorize_failed"),  # fails closed
    ],
)
def test_refused_callers(
    scp: DicomSCP, calling: str, called: str, expected: tuple[int, int, int], reason: str
) -> None:
    with capture_logs() as logs:
        assoc = associate(scp, calling, called)
        assert rejection(assoc) == expected
    rejected = [e for e in logs if e["event"] == "dicom.association_rejected"]
    assert len(rejected) == 1, logs
    assert rejected[0]["reason"] == reason and rejected[0]["calling_ae"] == calling
    assert not [e for e in logs if e["event"] in ("dicom.association_accepted", "dicom.echo")]


def test_the_scp_keeps_serving_after_refusals_and_stops_cleanly(scp: DicomSCP) -> None:
    for _ in range(3):
        assert associate(scp, "NOBODY").is_rejected
    assoc = associate(scp, "CT_1")
    assert assoc.is_established
    # stopping aborts an open association and frees the port
    port = scp.bound_port
    scp.stop()
    assoc.release()
    again = DicomSCP("127.0.0.1", port, NODE_AE, authorize)
    again.start()
    try:
        echo = associate(again, "CT_1")
        assert echo.is_established and echo.send_c_echo().Status == 0
        echo.release()
    finally:
        again.stop()


def test_a_port_in_use_is_a_clear_error(scp: DicomSCP) -> None:
    other = DicomSCP("127.0.0.1", scp.bound_port, NODE_AE, authorize)
    with pytest.raises(Exception) as exc:
        other.start()
    assert getattr(exc.value, "code", None) == "DICOM_LISTEN_FAILED"
