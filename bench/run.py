"""MedLedger benchmarks (``make bench``): numbers, never assertions.

1. Transaction throughput of one node: signed ``record.read`` transactions
   (the most frequent operation of a medical ledger: every read is an access
   event) from many clinicians, submitted in batches, measured from the first
   submission to the last commit. Latency p50/p99 per batch under load, and of
   single transactions (submit -> committed) when the node is idle.
2. Record put/get of a 100 MB file through the node (client-side encryption,
   hashing, streaming, fsync, on-chain registration / access event, key
   release) against a plain durable file copy on the same disk, in the same run.

Run: ``make bench`` or ``.venv/bin/python bench/run.py [--txs N] [--mb M]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from medledger.app.model import READ_RECORD, ReadRecordBody
from medledger.client import Client
from medledger.crypto.keys import PrivateKey, load_key_file
from medledger.ledger.tx import make_tx


def cli(*args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "medledger", *args], check=True, capture_output=True, text=True
    ).stdout


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    k = max(0, min(len(values) - 1, round(p / 100 * (len(values) - 1))))
    return values[k]


def userspace_copy(src: Path, dst: Path) -> None:
    """A copy through user space (1 MiB reads and writes), then fsync: what a program that
    handles the bytes itself, as MedLedger must (to hash and encrypt them), pays."""
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while chunk := fin.read(1 << 20):
            fout.write(chunk)
        fout.flush()
        os.fsync(fout.fileno())


def durable_copy(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)
    fd = os.open(dst, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def bench_txs(
    api: str, admin: PrivateKey, n_txs: int, senders: int, batch: int, workers: int
) -> dict[str, float]:
    with Client(api, admin) as a:
        chain_id = a.chain_id
        patient = PrivateKey.generate()
        a.enroll(patient.id, "patient")
        clinicians = [PrivateKey.generate() for _ in range(senders)]
        nonce = a.next_nonce()
        raws = [
            make_tx(
                admin,
                chain_id=chain_id,
                nonce=nonce + i,
                kind="identity.enroll",
                body=_enroll(k.id),
            )
            for i, k in enumerate(clinicians)
        ]
        for r in a.submit_batch(raws):
            assert r.get("code") == "OK", r
    sample = Path(tempfile.mkstemp()[1])
    sample.write_bytes(os.urandom(1000))
    with Client(api, clinicians[0]) as c0:
        record_id = c0.put_record(sample, patient=patient.id, record_type="note").record_id
    sample.unlink()
    per = n_txs // senders
    print(
        f"  signing {per * senders} record.read transactions from {senders} clinicians ...",
        flush=True,
    )
    t0 = time.perf_counter()
    body = ReadRecordBody(record_id=record_id, purpose="treatment")
    txs: list[bytes] = []
    for k in clinicians:
        start = 1 if k is clinicians[0] else 0  # clinician 0 used nonce 0 to register
        txs.extend(
            make_tx(k, chain_id=chain_id, nonce=start + j, kind=READ_RECORD, body=body)
            for j in range(per)
        )
    # Closed loop: each worker owns a disjoint set of senders (so per-sender nonce
    # order holds) and sends its batches one after another, waiting for each to commit.
    groups = [
        [txs[s * per : (s + 1) * per] for s in range(w, senders, workers)] for w in range(workers)
    ]
    worker_batches: list[list[list[bytes]]] = []
    for g in groups:
        seq = [tx for j in range(per) for sender_txs in g for tx in [sender_txs[j]]]
        worker_batches.append([seq[i : i + batch] for i in range(0, len(seq), batch)])
    print(
        f"  signed in {time.perf_counter() - t0:.1f}s; {workers} clients send batches of "
        f"{batch} and wait for each to commit",
        flush=True,
    )
    latencies: list[float] = []
    committed = 0
    lock = threading.Lock()

    def worker(batches: list[list[bytes]]) -> None:
        nonlocal committed
        with Client(api, admin, timeout=300) as c:
            for b in batches:
                t = time.perf_counter()
                res = c.submit_batch(b, wait=True, compact=True)
                dt = time.perf_counter() - t
                ok = sum(1 for r in res if r.get("code") == "OK")
                if ok != len(b):
                    bad = [r for r in res if r.get("code") != "OK"][:3]
                    raise SystemExit(f"not committed: {bad}")
                with lock:
                    latencies.append(dt)
                    committed += ok

    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(worker, worker_batches))
    elapsed = time.perf_counter() - start
    tps = committed / elapsed
    # idle latency of single transactions
    single: list[float] = []
    with Client(api, clinicians[1]) as c1:
        nonce = c1.next_nonce()
        for i in range(100):
            raw = make_tx(
                clinicians[1], chain_id=chain_id, nonce=nonce + i, kind=READ_RECORD, body=body
            )
            t = time.perf_counter()
            r = c1.submit_raw(raw)
            single.append(time.perf_counter() - t)
            assert r["code"] == "OK"
    return {
        "txs": committed,
        "seconds": elapsed,
        "tx_per_s": tps,
        "batch_latency_p50_ms": pct(latencies, 50) * 1000,
        "batch_latency_p99_ms": pct(latencies, 99) * 1000,
        "single_tx_latency_p50_ms": pct(single, 50) * 1000,
        "single_tx_latency_p99_ms": pct(single, 99) * 1000,
    }


def _enroll(identity_id: str) -> object:
    from medledger.app.model import EnrollBody

    return EnrollBody(id=identity_id, role="clinician")


def bench_data(api: str, admin: PrivateKey, work: Path, mb: int, rounds: int) -> dict[str, float]:
    doctor, patient = PrivateKey.generate(), PrivateKey.generate()
    with Client(api, admin) as a:
        a.enroll(doctor.id, "clinician")
        a.enroll(patient.id, "patient")
    src = work / "study.bin"
    with open(src, "wb") as fh:
        for _ in range(mb):
            fh.write(os.urandom(1 << 20))
    size = src.stat().st_size
    copy_s, back_s, put_s, get_s, user_s = [], [], [], [], []
    with Client(api, doctor, timeout=600) as c:
        for i in range(rounds):
            t = time.perf_counter()
            durable_copy(src, work / f"copy{i}.bin")
            copy_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            durable_copy(work / f"copy{i}.bin", work / f"back{i}.bin")
            back_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            userspace_copy(src, work / f"user{i}.bin")
            user_s.append(time.perf_counter() - t)
            (work / f"user{i}.bin").unlink()
            t = time.perf_counter()
            rec = c.put_record(src, patient=patient.id, record_type="imaging")
            put_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            c.get_record(rec.record_id, work / f"got{i}.bin")
            get_s.append(time.perf_counter() - t)
            if (work / f"got{i}.bin").read_bytes() != src.read_bytes():
                raise SystemExit("get returned different bytes")
            for name in (f"copy{i}.bin", f"back{i}.bin", f"got{i}.bin"):
                (work / name).unlink()
    m = statistics.median
    return {
        "bytes": size,
        "plain_copy_s": m(copy_s),
        "plain_copy_back_s": m(back_s),
        "put_s": m(put_s),
        "get_s": m(get_s),
        "put_MBps": size / m(put_s) / 1e6,
        "get_MBps": size / m(get_s) / 1e6,
        "plain_copy_MBps": size / m(copy_s) / 1e6,
        "userspace_copy_s": m(user_s),
        "put_vs_copy": m(put_s) / m(copy_s),
        "get_vs_copy": m(get_s) / m(back_s),
        "put_vs_userspace_copy": m(put_s) / m(user_s),
        "get_vs_userspace_copy": m(get_s) / m(user_s),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--txs", type=int, default=40_000)
    ap.add_argument("--senders", type=int, default=100)
    ap.add_argument("--batch", type=int, default=1_000)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json-out", type=Path, default=Path("bench/results/latest.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="medledger-bench-", dir=".") as tmp:
        root = Path(tmp) / "consortium"
        cli("init", "--dir", str(root), "--institutions", "1")
        cli("up", "--dir", str(root))
        try:
            status = json.loads(cli("status", "--dir", str(root), "--json"))["nodes"][0]
            api = status["api"]
            admin = load_key_file(root / status["name"] / "admin.key")
            print("== transaction throughput (1 node, submission -> commit)", flush=True)
            tx = bench_txs(api, admin, args.txs, args.senders, args.batch, args.workers)
            for k, v in tx.items():
                print(f"  {k:28s} {v:12.1f}")
            print(f"  goal: >= 10,000 tx/s -> {'MET' if tx['tx_per_s'] >= 10_000 else 'NOT MET'}")
            print(
                f"== record put/get of {args.mb} MB vs plain durable copy (median of {args.rounds})",
                flush=True,
            )
            data = bench_data(api, admin, Path(tmp), args.mb, args.rounds)
            for k, v in data.items():
                print(f"  {k:28s} {v:12.2f}")
            ok = data["put_vs_copy"] <= 3 and data["get_vs_copy"] <= 3
            print(f"  goal: put/get within 3x of plain copy -> {'MET' if ok else 'NOT MET'}")
        finally:
            cli("down", "--dir", str(root))
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps({"txs": tx, "data": data}, indent=2) + "\n")
    print(f"results written to {args.json_out}")


if __name__ == "__main__":
    main()
