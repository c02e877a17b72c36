"""The whole user flow through the ``medledger`` CLI, against real node processes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from medledger.ledger.proofs import MAGIC

from .harness import (
    CHUNK_SIZE,
    Consortium,
    assert_cli_error,
    cli_json,
    is_node_process,
    run_cli,
)

HEX = frozenset("0123456789abcdef")


def new_key(c: Consortium, name: str) -> tuple[str, Path]:
    path = c.work / f"{name}.key"
    doc = cli_json("keys", "new", "--out", path)
    assert doc["id"].startswith("ml") and doc["file"] == str(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600, "key file readable by others"
    return doc["id"], path


def test_full_user_flow(new_consortium: Consortium) -> None:
    c = new_consortium
    work = c.work

    # init, up, status
    info = c.init()
    assert info["chain_id"] and len(info["institutions"]) == 1
    inst = info["institutions"][0]
    assert Path(inst["admin_key"]).is_file() and inst["api"].startswith("http://127.0.0.1:")
    started = c.up()["nodes"]
    assert [n["started"] for n in started] == [True]
    st = c.status()["nodes"]
    assert len(st) == 1
    node = st[0]
    for field in ("name", "api", "pid", "height", "app_hash"):
        assert field in node, field
    assert node["name"] == inst["name"] and node["api"] == inst["api"]
    assert node["running"] is True and node["height"] == 0
    assert len(node["app_hash"]) == 64 and set(node["app_hash"]) <= HEX
    assert node["pid"] == started[0]["pid"] and is_node_process(node["pid"])
    again = c.up()["nodes"]
    assert again[0]["started"] is False and again[0]["pid"] == node["pid"]
    api, admin = inst["api"], inst["admin_key"]

    # keys and enrollment
    ids = {}
    keys = {}
    heights = []
    for role in ("clinician", "patient", "researcher"):
        ids[role], keys[role] = new_key(c, role)
        r = cli_json(
            "identity", "enroll", "--node", api, "--as", admin, "--role", role, "--id", ids[role]
        )
        assert r["code"] == "OK" and r["data"]["role"] == role
        heights.append(r["height"])
    assert heights == sorted(heights) and heights[0] >= 1
    patient = ids["patient"]

    # record put: a multi-chunk file
    content = os.urandom(1_500_000)
    src = work / "scan.bin"
    src.write_bytes(content)
    put = cli_json(
        "record",
        "put",
        src,
        "--patient",
        patient,
        "--type",
        "imaging",
        "--node",
        api,
        "--as",
        keys["clinician"],
    )
    rid = put["record_id"]
    assert put["height"] > heights[-1] and len(put["tx_hash"]) == 64
    assert put["size"] == len(content)
    assert put["chunk_count"] == -(-len(content) // CHUNK_SIZE) > 1

    # record get by the patient and by the clinician: byte-identical
    for role, purpose in (("patient", "patient-access"), ("clinician", "treatment")):
        out = work / f"got-{role}.bin"
        got = cli_json(
            "record",
            "get",
            rid,
            "--out",
            out,
            "--purpose",
            purpose,
            "--node",
            api,
            "--as",
            keys[role],
        )
        assert got["size"] == len(content)
        assert out.read_bytes() == content, f"{role} read different bytes"

    # the researcher is denied, the attempt is logged, nothing is written
    denied_out = work / "got-researcher.bin"
    r = run_cli(
        "record",
        "get",
        rid,
        "--out",
        denied_out,
        "--purpose",
        "research",
        "--node",
        api,
        "--as",
        keys["researcher"],
    )
    assert_cli_error(r, "ACCESS_DENIED")
    assert not denied_out.exists()
    assert not [p for p in work.iterdir() if p.name.endswith(".part")]

    # record ls
    ls = cli_json("record", "ls", "--patient", patient, "--node", api, "--as", keys["patient"])
    assert ls["patient"] == patient
    assert [(x["record_id"], x["type"], x["size"]) for x in ls["records"]] == [
        (rid, "imaging", len(content))
    ]
    r = run_cli("record", "ls", "--patient", patient, "--node", api, "--as", keys["researcher"])
    assert_cli_error(r, "ACCESS_DENIED")

    # audit (as the patient), with proofs
    proof = work / "audit.proof"
    audit = cli_json(
        "audit", "--patient", patient, "--proof-out", proof, "--node", api, "--as", keys["patient"]
    )
    events = audit["events"]
    for e in events:
        for field in ("actor", "action", "record_id", "height", "outcome"):
            assert field in e, field
    seen = [(e["action"], e["actor"], e["record_id"], e["outcome"]) for e in events]
    admin_id = inst["admin_id"]
    assert seen == [
        ("enroll", admin_id, None, "ok"),
        ("write", ids["clinician"], rid, "ok"),
        ("read", patient, rid, "allowed"),
        ("read", ids["clinician"], rid, "allowed"),
        ("read", ids["researcher"], rid, "denied"),
    ]
    assert events[0]["height"] == heights[1] and events[1]["height"] == put["height"]
    assert [e["height"] for e in events] == sorted(e["height"] for e in events)
    assert events[1]["tx_hash"] == put["tx_hash"]
    # another identity may not see the patient's trail
    r = run_cli("audit", "--patient", patient, "--node", api, "--as", keys["researcher"])
    assert_cli_error(r, "ACCESS_DENIED")

    # the proof verifies offline, against the consortium's genesis too
    v = cli_json("proof", "verify", proof)
    assert v["valid"] is True
    assert [(e["action"], e["actor"], e["height"]) for e in v["events"]] == [
        (e["action"], e["actor"], e["height"]) for e in events
    ]
    v = cli_json("proof", "verify", proof, "--genesis", c.dir / "genesis.json")
    assert v["valid"] is True

    # one flipped byte anywhere makes it fail, with an error code and no traceback
    data = proof.read_bytes()
    chain_at = data.index(info["chain_id"].encode())
    flips = {
        "magic": (0, 0x01),
        "chain id (invalid UTF-8)": (chain_at, 0x80),
        "middle": (len(data) // 2, 0x01),
        "last byte": (len(data) - 1, 0x01),
    }
    assert data.startswith(MAGIC)
    for what, (pos, bit) in flips.items():
        bad = bytearray(data)
        bad[pos] ^= bit
        tampered = work / "tampered.proof"
        tampered.write_bytes(bytes(bad))
        r = run_cli("proof", "verify", tampered)
        assert r.code != 0, f"proof with a flipped byte ({what}) verified"
        assert "Traceback" not in r.err, f"{what}: {r.err}"
        assert_cli_error(r, "BAD_PROOF")

    # MEDLEDGER_NODE and MEDLEDGER_KEY stand for --node and --as
    env = {"MEDLEDGER_NODE": api, "MEDLEDGER_KEY": str(keys["patient"])}
    r = run_cli("record", "ls", "--patient", patient, "--json", env=env)
    assert r.code == 0, r.err
    assert [x["record_id"] for x in r.json()["records"]] == [rid]
    env_out = work / "got-env.bin"
    r = run_cli(
        "record", "get", rid, "--out", env_out, "--purpose", "patient-access", "--json", env=env
    )
    assert r.code == 0, r.err
    assert env_out.read_bytes() == content
    # ... and the env key is the identity acting: the researcher's key is denied
    env_r = {"MEDLEDGER_NODE": api, "MEDLEDGER_KEY": str(keys["researcher"])}
    r = run_cli("record", "get", rid, "--out", work / "x.bin", env=env_r)
    assert_cli_error(r, "ACCESS_DENIED")
    # without a node, a clear error
    r = run_cli("record", "ls", "--patient", patient, "--as", keys["patient"])
    assert_cli_error(r, "NO_NODE")

    # the reads are on the ledger: two more read events, heights grew
    audit2 = cli_json("audit", "--patient", patient, env=env)
    assert len(audit2["events"]) == len(events) + 2
    assert c.status()["nodes"][0]["height"] == audit2["events"][-1]["height"]


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    """Long error messages are not wrapped: scripts see one ``error: CODE: message`` line."""
    deep = tmp_path / ("a-directory-name-long-enough-to-push-the-message-past-80-columns" * 2)
    deep.mkdir()
    (deep / "something").write_text("x")
    r = run_cli("init", "--dir", deep)
    assert_cli_error(r, "DIR_NOT_EMPTY")
    assert str(deep) in r.err
    r = run_cli("status", "--dir", tmp_path / "missing", "--json")
    assert_cli_error(r, "NOT_A_CONSORTIUM")
