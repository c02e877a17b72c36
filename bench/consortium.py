"""Consortium benchmark: BFT consensus across validator processes on this machine.

For 4 validators (and 7, and 4 with one down): peak throughput of signed
``record.read`` transactions from submission to commit, then commit latency
p50/p99 at 50%, 90% and 100% of that peak (open-loop batches at a fixed rate),
and the CPU seconds all node processes spent per committed transaction.

Run: ``.venv/bin/python bench/consortium.py [--validators 4] [--txs N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from medledger.app.model import READ_RECORD, EnrollBody, ReadRecordBody
from medledger.client import Client
from medledger.crypto.keys import PrivateKey, load_key_file
from medledger.ledger.tx import make_tx

CLK = os.sysconf("SC_CLK_TCK")


def cli(*args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "medledger", *args], check=True, capture_output=True, text=True
    ).stdout


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLK
    return total


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    return v[max(0, min(len(v) - 1, round(p / 100 * (len(v) - 1))))]


class Load:
    """Pre-signed record.read transactions, split into per-worker sender groups."""

    def __init__(self, apis: list[str], admin: PrivateKey, senders: int, per_sender: int) -> None:
        self.apis = apis
        with Client(apis[0], admin) as a:
            self.chain_id = a.chain_id
            patient = PrivateKey.generate()
            a.enroll(patient.id, "patient")
            self.clinicians = [PrivateKey.generate() for _ in range(senders)]
            nonce = a.next_nonce()
            raws = [
                make_tx(
                    admin,
                    chain_id=self.chain_id,
                    nonce=nonce + i,
                    kind="identity.enroll",
                    body=EnrollBody(id=k.id, role="clinician"),
                )
                for i, k in enumerate(self.clinicians)
            ]
            for r in a.submit_batch(raws):
                assert r.get("code") == "OK", r
        sample = Path(tempfile.mkstemp()[1])
        sample.write_bytes(os.urandom(1000))
        with Client(apis[0], self.clinicians[0]) as c0:
            self.record_id = c0.put_record(sample, patient=patient.id, record_type="note").record_id
        sample.unlink()
        body = ReadRecordBody(record_id=self.record_id, purpose="treatment")
        self.next_nonce = {k.id: (1 if k is self.clinicians[0] else 0) for k in self.clinicians}
        self.per_sender = per_sender
        self.body = body

    def batches(self, workers: int, batch: int) -> list[list[list[bytes]]]:
        """Fresh signed transactions: one list of batches per worker (disjoint senders)."""
        out: list[list[list[bytes]]] = []
        for w in range(workers):
            mine = self.clinicians[w::workers]
            seq: list[bytes] = []
            for j in range(self.per_sender):
                for k in mine:
                    seq.append(
                        make_tx(
                            k,
                            chain_id=self.chain_id,
                            nonce=self.next_nonce[k.id] + j,
                            kind=READ_RECORD,
                            body=self.body,
                        )
                    )
            for k in mine:
                self.next_nonce[k.id] += self.per_sender
            out.append([seq[i : i + batch] for i in range(0, len(seq), batch)])
        return out


def run_load(
    load: Load, apis: list[str], workers: int, batch: int, rate: float | None
) -> dict[str, float]:
    """Each worker sends its batches to one node (round robin) and waits for commit.

    ``rate`` (tx/s over all workers) spaces the batches; None sends back to back.
    """
    plan = load.batches(workers, batch)
    latencies: list[float] = []
    committed = 0
    lock = threading.Lock()
    start = time.perf_counter()
    interval = None if rate is None else batch * workers / rate

    def worker(w: int) -> None:
        nonlocal committed
        admin = PrivateKey.generate()  # any key: submission is not a signed request
        with Client(apis[w % len(apis)], admin, timeout=300) as c:
            for i, b in enumerate(plan[w]):
                if interval is not None:
                    due = start + i * interval + w * interval / workers
                    delay = due - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                t = time.perf_counter()
                res = c.submit_batch(b, wait=True, compact=True)
                dt = time.perf_counter() - t
                ok = sum(1 for r in res if r.get("code") == "OK")
                with lock:
                    latencies.append(dt)
                    committed += ok

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(worker, range(workers)))
    elapsed = time.perf_counter() - start
    return {
        "txs": committed,
        "seconds": elapsed,
        "tx_per_s": committed / elapsed,
        "latency_p50_ms": pct(latencies, 50) * 1000,
        "latency_p99_ms": pct(latencies, 99) * 1000,
    }


def bench(
    validators: int, per_sender: int, senders: int, batch: int, workers: int, down: int = 0
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="medledger-bench-", dir=".") as tmp:
        root = Path(tmp) / "c"
        cli("init", "--dir", str(root), "--institutions", str(validators))
        cli("up", "--dir", str(root))
        try:
            nodes = json.loads(cli("status", "--dir", str(root), "--json"))["nodes"]
            for n in nodes[len(nodes) - down :]:
                os.kill(n["pid"], signal.SIGKILL)
            live = nodes[: len(nodes) - down]
            apis = [n["api"] for n in live]
            pids = [n["pid"] for n in live]
            admin = load_key_file(root / live[0]["name"] / "admin.key")
            load = Load(apis, admin, senders, per_sender)
            cpu0 = cpu_seconds(pids)
            peak = run_load(load, apis, workers, batch, None)
            cpu = cpu_seconds(pids) - cpu0
            peak["cpu_s_per_tx"] = cpu / max(1, peak["txs"])
            out: dict[str, Any] = {"validators": validators, "down": down, "peak": peak}
            if down == 0:
                for frac in (0.5, 0.9, 1.0):
                    out[f"at_{int(frac * 100)}pct"] = run_load(
                        load, apis, workers, batch, peak["tx_per_s"] * frac
                    )
            return out
        finally:
            cli("down", "--dir", str(root))


def show(result: dict[str, Any]) -> None:
    name = f"{result['validators']} validators" + (
        f", {result['down']} down" if result["down"] else ""
    )
    print(f"== {name}", flush=True)
    for key, vals in result.items():
        if isinstance(vals, dict):
            line = "  ".join(f"{k}={v:.4g}" for k, v in vals.items())
            print(f"  {key:10s} {line}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-sender", type=int, default=100)
    ap.add_argument("--senders", type=int, default=200)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--json-out", type=Path, default=Path("bench/results/consortium.json"))
    args = ap.parse_args()
    results = []
    for validators, down in ((4, 0), (7, 0), (4, 1)):
        r = bench(validators, args.per_sender, args.senders, args.batch, args.workers, down)
        show(r)
        results.append(r)
    four = results[0]["peak"]
    ok = four["tx_per_s"] >= 5000 and results[0]["at_100pct"]["latency_p99_ms"] < 1000
    print(
        f"goal: 5,000 tx/s with 4 validators and p99 commit < 1 s -> {'MET' if ok else 'NOT MET'}"
    )
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results written to {args.json_out}")


if __name__ == "__main__":
    main()
