"""Audit benchmark: the audit index at 1,000,000 events, and the access policy's rate.

1. A ``LedgerStore`` in a temp dir is filled through ``save_block`` with synthetic
   blocks (default 1,000 blocks x 1,000 events: ``read`` events about 10,000 patients
   by 2,000 clinicians, and about 2% of them with a regulator alert of some kind).
2. Queries through the code the API runs (``api.audit_routes.subject_events_doc`` and
   ``alerts_doc``, plus JSON encoding of the answer), p50/p99 over many random queries:
   one patient's trail (all of it, and from a height on), the latest 100 regulator
   alerts, and the latest 100 of one kind. For comparison, a few listings the way the
   API listed them before (decoding the blocks that hold the events).
3. The access policy: ``access.decide_read`` decisions per second for a mix of readers
   (clinicians in and out of care, researchers, pharmacies, insurers, proxies) against
   patients with a few consents each.

Run from the repository root:
``.venv/bin/python bench/audit.py [--blocks 1000] [--events-per-block 1000]
[--patients 10000] [--queries 500] [--workdir DIR] [--json-out FILE]``
(results also go to ``bench/results/audit.json`` by default).
Progress goes to stderr, the table to stdout. Numbers, never assertions.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from medledger.api.audit_routes import alerts_doc, subject_events_doc
from medledger.app import access
from medledger.app.model import (
    ACTIVE,
    ACTOR_IDENTITY,
    ACTOR_INSTITUTION,
    ALERT_BREAK_GLASS,
    ALERT_DENIED,
    ALERT_ERASURE,
    ALERT_JAILED,
    ALERT_SPIKE,
    ALERT_STORAGE,
    CONSENT_ACTIVE,
    REGULATOR_SUBJECT,
    Consent,
    Identity,
    RecordMeta,
)
from medledger.ledger.block import Commit, Event, Header, TxResult
from medledger.ledger.store import LedgerStore

GOAL_QUERY_MS = 200.0  # an audit query over 1M+ events
T0 = 1_760_000_000_000
INSTITUTIONS = ["hospital-a", "hospital-b", "hospital-c", "hospital-d"]
PURPOSES = ["treatment", "treatment", "treatment", "referral", "research", "insurance"]
# how often each kind is raised, relative to the others
ALERT_MIX = [
    (ALERT_DENIED, 60),
    (ALERT_BREAK_GLASS, 15),
    (ALERT_SPIKE, 15),
    (ALERT_STORAGE, 6),
    (ALERT_ERASURE, 3),
    (ALERT_JAILED, 1),
]


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    k = max(0, min(len(values) - 1, round(p / 100 * (len(values) - 1))))
    return values[k]


def ident(tag: str, i: int) -> str:
    """An identity-ID-shaped string (``ml`` + 32 base32 characters)."""
    return "ml" + hashlib.sha256(f"{tag}/{i}".encode()).hexdigest()[:32]


def record_id(i: int) -> str:
    return "r" + hashlib.sha256(f"record/{i}".encode()).hexdigest()[:32]


def h32(*parts: object) -> bytes:
    return hashlib.sha256(repr(parts).encode()).digest()


# ---- 1. build the ledger -------------------------------------------------------------------


def build(store: LedgerStore, blocks: int, per_block: int, patients: int, seed: int) -> Any:
    rng = random.Random(seed)
    patient_ids = [ident("patient", i) for i in range(patients)]
    clinicians = [ident("clinician", i) for i in range(max(1, patients // 5))]
    kinds = [k for k, _ in ALERT_MIX]
    weights = [w for _, w in ALERT_MIX]
    events_total = alerts_total = 0
    alert_counts = {k: 0 for k in kinds}
    prev = h32("genesis")
    started = time.perf_counter()
    insert_s = 0.0
    mark = (0, 0.0)  # events and save_block seconds at the last progress line
    for height in range(1, blocks + 1):
        results: list[TxResult] = []
        n = 0
        while n < per_block:
            patient = rng.choice(patient_ids)
            actor = rng.choice(clinicians)
            rid = record_id(rng.randrange(patients * 10))
            purpose = rng.choice(PURPOSES)
            evs = []
            if n + 1 < per_block and rng.random() < 0.02:
                kind = rng.choices(kinds, weights)[0]
                outcome = "denied" if kind == ALERT_DENIED else "allowed"
                evs.append(
                    Event(
                        "break_glass" if kind == ALERT_BREAK_GLASS else "read",
                        actor,
                        patient,
                        rid,
                        outcome,
                        f"purpose={purpose}; rule=not_in_care; the patient is not in this "
                        "clinician's care and no consent",
                    )
                )
                evs.append(
                    Event("alert", actor, REGULATOR_SUBJECT, rid, kind, f"rule=synthetic {kind}")
                )
                alert_counts[kind] += 1
                alerts_total += 1
            else:
                evs.append(
                    Event(
                        "read",
                        actor,
                        patient,
                        rid,
                        "allowed",
                        f"purpose={purpose}; rule=care_relationship; the patient is in this "
                        "clinician's care",
                    )
                )
            n += len(evs)
            results.append(TxResult(code="OK", message="", events=evs, data={}))
        events_total += n
        txs = [b"synthetic-tx-%d-%d" % (height, i) for i in range(len(results))]
        hashes = [h32(height, i) for i in range(len(results))]
        header = Header(
            chain_id="bench-audit",
            height=height,
            time_ms=T0 + height * 1000,
            prev_hash=prev,
            tx_root=h32("tx", height),
            results_root=h32("results", height),
            app_hash=h32("app", height),
            validators_hash=h32("validators"),
            proposer="bench",
            tx_count=len(txs),
        )
        commit = Commit(height=height, round=0, block_hash=header.hash(), signatures=[])
        t = time.perf_counter()
        store.save_block(header, txs, hashes, results, commit, {})
        insert_s += time.perf_counter() - t
        prev = header.hash()
        if height % max(1, blocks // 20) == 0 or height == blocks:
            elapsed = time.perf_counter() - started
            recent = (events_total - mark[0]) / (insert_s - mark[1])
            mark = (events_total, insert_s)
            say(
                f"  block {height:>6,}/{blocks:,}: {events_total:>10,} events in "
                f"{elapsed:.0f} s; save_block now {recent:,.0f} events/s"
            )
    return {
        "events": events_total,
        "alerts": alerts_total,
        "alerts_by_kind": alert_counts,
        "patients": patients,
        "blocks": blocks,
        "build_s": time.perf_counter() - started,
        "save_block_s": insert_s,
        "save_events_per_s": events_total / insert_s,
        "patient_ids": patient_ids,
    }


# ---- 2. queries ----------------------------------------------------------------------------


def timed(fn: Callable[[], Any], runs: int) -> tuple[list[float], Any]:
    out: list[float] = []
    last: Any = None
    for _ in range(runs):
        t = time.perf_counter()
        last = fn()
        out.append((time.perf_counter() - t) * 1000)
    return out, last


def summary(ms: list[float]) -> dict[str, float]:
    return {"p50_ms": pct(ms, 50), "p99_ms": pct(ms, 99), "max_ms": max(ms), "n": len(ms)}


def answer(doc: dict[str, Any]) -> bytes:
    return msgspec.json.encode(doc)


def old_listing(store: LedgerStore, subject: str) -> int:
    """The pre-issue-6 listing: positions from the index, then decode each block."""
    cache: dict[int, Any] = {}
    n = 0
    for height, idx, ev in store.audit_positions(subject):
        block = cache.get(height)
        if block is None:
            block = cache[height] = store.get_block(height)
        _ = block.results[idx].events[ev]
        n += 1
    return n


def bench_queries(
    store: LedgerStore, patient_ids: list[str], blocks: int, queries: int, seed: int
) -> dict[str, Any]:
    rng = random.Random(seed + 1)
    out: dict[str, Any] = {}
    sizes: list[int] = []

    def patient_trail() -> int:
        doc = subject_events_doc(store, rng.choice(patient_ids))
        sizes.append(len(doc["events"]))
        return len(answer(doc))

    ms, _ = timed(patient_trail, queries)
    out["patient_trail"] = {**summary(ms), "events_p50": pct([float(s) for s in sizes], 50)}

    def patient_since() -> int:
        doc = subject_events_doc(store, rng.choice(patient_ids), since_height=blocks * 9 // 10)
        return len(answer(doc))

    ms, _ = timed(patient_since, queries)
    out["patient_trail_last_10pct"] = summary(ms)

    ms, _ = timed(lambda: answer(alerts_doc(store)), queries)
    out["alerts_latest_100"] = summary(ms)

    kinds = [k for k, _ in ALERT_MIX]
    ms, _ = timed(lambda: answer(alerts_doc(store, kind=rng.choice(kinds))), queries)
    out["alerts_by_kind_100"] = summary(ms)

    ms, _ = timed(lambda: answer(alerts_doc(store, kind=ALERT_JAILED)), queries)
    out["alerts_rarest_kind_100"] = summary(ms)

    ms, _ = timed(
        lambda: answer(alerts_doc(store, kind=ALERT_DENIED, since_height=blocks // 2, limit=1000)),
        max(10, queries // 5),
    )
    out["alerts_denied_since_half_1000"] = summary(ms)

    # the pre-issue-6 path, a few runs (it decodes up to one block per event)
    runs = max(3, min(10, queries // 50))
    ms, _ = timed(lambda: old_listing(store, rng.choice(patient_ids)), runs)
    out["old_patient_trail_decoding_blocks"] = summary(ms)
    return out


# ---- 3. the access policy ------------------------------------------------------------------


def bench_policy(decisions: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed + 2)
    now = T0 + 10_000_000

    def person(role: str, i: int, inst: str) -> Identity:
        return Identity(
            id=ident(role, i),
            role=role,
            institution=inst,
            status=ACTIVE,
            enrolled_height=1,
            enrolled_by="admin",
        )

    patients = [person("patient", i, rng.choice(INSTITUTIONS)) for i in range(200)]
    readers = (
        [person("clinician", i, rng.choice(INSTITUTIONS)) for i in range(40)]
        + [person("researcher", i, "hospital-b") for i in range(5)]
        + [person("pharmacy", i, "hospital-c") for i in range(5)]
        + [person("insurer", i, "hospital-d") for i in range(5)]
        + [person("service", i, rng.choice(INSTITUTIONS)) for i in range(5)]
    )

    def consent(
        n: int,
        patient: Identity,
        actor_kind: str,
        actor: str,
        purposes: list[str],
        permit: bool,
        types: list[str],
    ) -> Consent:
        return Consent(
            consent_id="c" + hashlib.sha256(f"consent/{n}".encode()).hexdigest()[:32],
            patient=patient.id,
            grantor=patient.id,
            actor_kind=actor_kind,
            actor=actor,
            purposes=purposes,
            record_ids=[],
            types=types,
            start_ms=T0,
            end_ms=now + 86_400_000,
            permit=permit,
            status=CONSENT_ACTIVE,
            height=1,
            revoked_height=0,
        )

    cases: list[tuple[Identity, RecordMeta, str, access.ReadFacts]] = []
    n = 0
    for p in patients:
        consents = []
        for _ in range(rng.randint(2, 5)):  # a few consents per patient
            n += 1
            choice = rng.random()
            if choice < 0.4:
                r = rng.choice(readers)
                consents.append(
                    consent(n, p, ACTOR_IDENTITY, r.id, ["treatment", "dispensing"], True, [])
                )
            elif choice < 0.7:
                consents.append(
                    consent(
                        n,
                        p,
                        ACTOR_INSTITUTION,
                        rng.choice(INSTITUTIONS),
                        ["research", "referral"],
                        True,
                        ["lab", "imaging"],
                    )
                )
            else:
                consents.append(
                    consent(n, p, ACTOR_INSTITUTION, "hospital-d", ["insurance"], False, [])
                )
        for _ in range(20):
            reader = rng.choice(readers)
            inst = rng.choice(INSTITUTIONS)
            rec = RecordMeta(
                record_id=record_id(rng.randrange(10**6)),
                patient=p.id,
                type=rng.choice(["note", "lab", "imaging", "prescription"]),
                content_hash="b" * 59,
                size=1000,
                chunk_count=1,
                shard_root=b"\x00" * 32,
                k=2,
                m=2,
                placement=INSTITUTIONS,
                custodians=INSTITUTIONS,
                threshold=3,
                deidentified=rng.random() < 0.3,
                institution=inst,
                creator=rng.choice(readers).id,
                created_ms=T0,
                height=1,
                erased_height=0,
            )
            facts = access.ReadFacts(
                in_care=reader.role == "clinician" and rng.random() < 0.5,
                is_proxy=rng.random() < 0.02,
                consents=consents,
            )
            cases.append((reader, rec, rng.choice([*PURPOSES, "dispensing"]), facts))
    rounds = max(1, decisions // len(cases))
    allowed = 0
    decide = access.decide_read
    t = time.perf_counter()
    for _ in range(rounds):
        for reader, rec, purpose, facts in cases:
            if decide(reader, rec, purpose, facts, now).allowed:
                allowed += 1
    elapsed = time.perf_counter() - t
    total = rounds * len(cases)
    return {
        "decisions": total,
        "decisions_per_s": total / elapsed,
        "us_per_decision": elapsed / total * 1e6,
        "allowed_share": allowed / total,
        "consents_per_patient": n / len(patients),
    }


# ---- report --------------------------------------------------------------------------------


def report(results: dict[str, Any]) -> list[tuple[str, bool]]:
    b = results["build"]
    q = results["queries"]
    print(
        f"== audit index: {b['events']:,} events ({b['alerts']:,} regulator alerts) in "
        f"{b['blocks']:,} blocks, {b['patients']:,} patients; "
        f"database {results['db_mb']:.0f} MB"
    )
    print(
        f"  built in {b['build_s']:.0f} s; save_block: {b['save_events_per_s']:,.0f} events/s "
        f"({b['save_block_s']:.1f} s in save_block)"
    )
    print(f"  {'query (doc + JSON, as the API answers)':48s} {'p50 ms':>9s} {'p99 ms':>9s}")
    labels = {
        "patient_trail": f"one patient's trail (~{q['patient_trail']['events_p50']:.0f} events)",
        "patient_trail_last_10pct": "one patient's trail, last 10% of heights",
        "alerts_latest_100": "regulator alerts, latest 100",
        "alerts_by_kind_100": "regulator alerts of one kind, latest 100",
        "alerts_rarest_kind_100": f"regulator alerts, rarest kind ({ALERT_JAILED})",
        "alerts_denied_since_half_1000": "denied_access since mid-chain, 1000",
        "old_patient_trail_decoding_blocks": "(before: one patient's trail decoding blocks)",
    }
    for key, label in labels.items():
        s = q[key]
        print(f"  {label:48s} {s['p50_ms']:9.2f} {s['p99_ms']:9.2f}")
    p = results["policy"]
    print(
        f"== access policy: {p['decisions_per_s']:,.0f} decide_read decisions/s "
        f"({p['us_per_decision']:.2f} us each; {p['consents_per_patient']:.1f} consents "
        f"per patient; {p['allowed_share']:.0%} allowed)"
    )
    worst = max(q[k]["p99_ms"] for k in labels if k != "old_patient_trail_decoding_blocks")
    scale = f" [measured at {b['events']:,} events]" if b["events"] < 1_000_000 else ""
    checks = [
        (
            f"audit query over 1M events < {GOAL_QUERY_MS:.0f} ms (worst p99 {worst:.1f} ms)"
            + scale,
            worst < GOAL_QUERY_MS,
        )
    ]
    print("== goals")
    for text, ok in checks:
        print(f"  {'met    ' if ok else 'NOT met'}  {text}")
    return checks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--blocks", type=int, default=1_000)
    ap.add_argument("--events-per-block", type=int, default=1_000)
    ap.add_argument("--patients", type=int, default=10_000)
    ap.add_argument("--queries", type=int, default=500, help="queries per kind of query")
    ap.add_argument("--decisions", type=int, default=500_000, help="policy decisions to time")
    ap.add_argument("--seed", type=int, default=6)
    ap.add_argument("--workdir", type=Path, default=None, help="parent of the temp dir (/tmp)")
    ap.add_argument(
        "--json-out", type=Path, default=Path(__file__).parent / "results" / "audit.json"
    )
    args = ap.parse_args()
    if min(args.blocks, args.events_per_block, args.patients, args.queries) < 1:
        ap.error("--blocks, --events-per-block, --patients and --queries must be >= 1")
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="medledger-audit-", dir=args.workdir))
    began = time.perf_counter()
    results: dict[str, Any] = {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg()[0]}
    try:
        path = work / "ledger.sqlite"
        say(
            f"building {args.blocks * args.events_per_block:,} audit events in {path} "
            f"({args.blocks:,} blocks x {args.events_per_block:,}) ..."
        )
        store = LedgerStore(path)
        build_info = build(store, args.blocks, args.events_per_block, args.patients, args.seed)
        patient_ids = build_info.pop("patient_ids")
        results["build"] = build_info
        store.close()
        results["db_mb"] = sum(
            f.stat().st_size for f in work.iterdir() if f.name.startswith("ledger.sqlite")
        ) / (1 << 20)
        say("querying (a reopened store, as a node after a restart) ...")
        store = LedgerStore(path)
        results["queries"] = bench_queries(store, patient_ids, args.blocks, args.queries, args.seed)
        store.close()
        say(f"timing {args.decisions:,} policy decisions ...")
        results["policy"] = bench_policy(args.decisions, args.seed)
    finally:
        say(f"removing {work} ...")
        shutil.rmtree(work, ignore_errors=True)
    results["loadavg_end"] = os.getloadavg()[0]
    results["seconds"] = time.perf_counter() - began
    say(f"done in {results['seconds']:.0f}s")
    checks = report(results)
    results["goals"] = [{"goal": t, "met": ok} for t, ok in checks]
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results written to {args.json_out}")


if __name__ == "__main__":
    main()
