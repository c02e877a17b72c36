"""The regulator's view and the audit listing through a real node and the CLI.

A denied read raises a ``denied_access`` alert that ``medledger regulator alerts``
shows (filtered by kind and height), the statistics count it, only regulators see
either, and a patient's proxy may list the patient's audit trail.
"""

from __future__ import annotations

import os

from .harness import Consortium, assert_cli_error, cli_json, expect_error, run_cli, signed_get


def test_denied_read_reaches_the_regulator(consortium: Consortium) -> None:
    c = consortium
    author = c.enroll("rv-author", "clinician")
    other = c.enroll("rv-other", "clinician")
    patient = c.enroll("rv-patient", "patient")
    proxy = c.enroll("rv-proxy", "patient")
    regulator = c.enroll("rv-regulator", "regulator")
    src = c.work / "rv-note.bin"
    src.write_bytes(os.urandom(10_000))
    with c.client(author) as cl:
        put = cl.put_record(src, patient=patient.id, record_type="note")
    rid = put.record_id
    node = ["--node", c.api]

    # a clinician who neither wrote the record nor treats the patient is denied
    r = run_cli("record", "get", rid, "--out", c.work / "rv-out.bin", *node, "--as", other.key_file)
    assert_cli_error(r, "ACCESS_DENIED")

    alerts = cli_json(
        "regulator", "alerts", "--kind", "denied_access", *node, "--as", regulator.key_file
    )
    assert alerts["truncated"] is False
    mine = [a for a in alerts["alerts"] if a["record_id"] == rid]
    assert len(mine) == 1, alerts
    alert = mine[0]
    assert alert["kind"] == "denied_access" and alert["actor"] == other.id
    assert "not_in_care" in alert["detail"]
    assert len(alert["tx_hash"]) == 64 and alert["time_ms"] > 0
    assert all(a["kind"] == "denied_access" for a in alerts["alerts"])
    # newest first; since_height and limit narrow the list
    later = cli_json(
        "regulator", "alerts", "--since-height", str(alert["height"] + 1), *node,
        "--as", regulator.key_file,
    )  # fmt: skip
    assert all(a["height"] > alert["height"] for a in later["alerts"])
    one = cli_json("regulator", "alerts", "--limit", "1", *node, "--as", regulator.key_file)
    assert len(one["alerts"]) == 1

    stats = cli_json("regulator", "stats", *node, "--as", regulator.key_file)
    inst = c.inst["name"]
    assert stats["by_institution"][inst]["read"]["denied"] >= 1
    assert stats["by_institution"][inst]["write"]["total"] >= 1
    assert stats["by_record_type"]["note"]["read"]["denied"] >= 1
    assert any(
        row["action"] == "read" and row["outcome"] == "denied" and row["record_type"] == "note"
        for row in stats["rows"]
    )

    # only regulators: not the patient, not the admin
    for who in (patient.key_file, c.admin_key_file):
        assert_cli_error(
            run_cli("regulator", "alerts", "--json", *node, "--as", who), "ACCESS_DENIED"
        )
        assert_cli_error(
            run_cli("regulator", "stats", "--json", *node, "--as", who), "ACCESS_DENIED"
        )
    with c.http() as http:
        expect_error(
            signed_get(http, regulator.key, "/api/v1/regulator/alerts?kind=nope"),
            400,
            "BAD_ALERT_KIND",
        )
        expect_error(
            signed_get(http, regulator.key, "/api/v1/regulator/alerts?limit=0"), 400, "BAD_LIMIT"
        )

    # the patient's trail: the denied read is on it; a stranger may not list it, a proxy may
    trail = cli_json("audit", "--patient", patient.id, *node, "--as", patient.key_file)["events"]
    assert any(
        e["action"] == "read" and e["outcome"] == "denied" and e["actor"] == other.id for e in trail
    )
    r = run_cli("audit", "--patient", patient.id, "--json", *node, "--as", proxy.key_file)
    assert_cli_error(r, "ACCESS_DENIED")
    with c.client(patient) as cl:
        assert cl.set_proxy(proxy.id)["code"] == "OK"
    as_proxy = cli_json("audit", "--patient", patient.id, *node, "--as", proxy.key_file)
    assert as_proxy["events"][: len(trail)] == trail
    with c.http() as http:
        path = f"/api/v1/audit?subject={patient.id}&since_height={alert['height']}&limit=1"
        resp = signed_get(http, proxy.key, path)
        assert resp.status_code == 200, resp.text
        doc = resp.json()
        assert len(doc["events"]) == 1 and doc["events"][0]["height"] >= alert["height"]
        assert doc["truncated"] is True
