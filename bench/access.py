"""Access benchmark: an authorized read of a small record, end to end, through a real
4-institution consortium with threshold key custody (3 of 4 custodians).

A clinician of hospital-b reads a 100 KB record that a clinician of hospital-a wrote,
under the patient's consent. Each read is the whole path: the access event is signed,
submitted, decided by the policy as its block executes and committed; the reader's node
gathers key shares from 3 of the 4 custodians (each re-checks the committed event and
the policy); the content is streamed, verified and decrypted; the output is fsynced.

Measured in the same run, for scale: the commit of the access event alone (the part
consensus takes), and the patient's own read (no consent lookup).

Run from the repository root: ``.venv/bin/python bench/access.py [--reads 40]``
(results also go to ``bench/results/access.json``). Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from storage import Consortium, say  # bench/, on sys.path

from medledger.client import Client
from medledger.crypto.keys import PrivateKey

RECORD_BYTES = 100_000
GOAL_P50_S = 1.5
GOAL_P99_S = 3.0


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50_s": round(statistics.median(values), 4),
        "p99_s": round(pct(values, 0.99), 4),
        "min_s": round(min(values), 4),
        "max_s": round(max(values), 4),
        "n": len(values),
    }


def timed_reads(client: Client, record_id: str, out: Path, n: int, purpose: str) -> list[float]:
    times = []
    for i in range(n):
        t = time.perf_counter()
        client.get_record(record_id, out, purpose=purpose)
        times.append(time.perf_counter() - t)
        if (i + 1) % 10 == 0:
            say(f"  {i + 1}/{n} reads")
    return times


def run(reads: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="medledger-access-bench-") as tmp:
        root = Path(tmp)
        with Consortium(root / "c4", 4) as c:
            author, patient = c.enroll("hospital-a")
            reader = PrivateKey.generate()
            with Client(c.api("hospital-b"), c.admin("hospital-b")) as admin_b:
                admin_b.enroll(reader.id, "clinician")
            src = root / "record.bin"
            data = os.urandom(RECORD_BYTES)
            src.write_bytes(data)
            with Client(c.api("hospital-a"), author) as a:
                put = a.put_record(src, patient=patient.id, record_type="lab")
            with Client(c.api("hospital-a"), patient) as p:
                p.grant_consent(reader.id, ["treatment"])
            out = root / "read.bin"
            with Client(c.api("hospital-b"), reader) as r:
                r.get_record(put.record_id, out)  # warm-up: connections, caches
                if out.read_bytes() != data:
                    raise RuntimeError("the read returned other bytes than were stored")
                say(f"{reads} consented reads of a {RECORD_BYTES // 1000} KB record ...")
                consented = timed_reads(r, put.record_id, out, reads, "treatment")
                say(f"{reads} access events alone (commit only) ...")
                commits = []
                for _ in range(reads):
                    t = time.perf_counter()
                    r.request_read(put.record_id, "treatment")
                    commits.append(time.perf_counter() - t)
            with Client(c.api("hospital-b"), patient) as p:
                say(f"{reads} reads by the patient ...")
                own = timed_reads(p, put.record_id, out, reads, "patient-access")
    result = {
        "record_bytes": RECORD_BYTES,
        "custody": {"threshold": put.threshold, "custodians": put.custodians},
        "consented_read": summary(consented),
        "patient_read": summary(own),
        "access_event_commit": summary(commits),
        "goals": {"p50_s": GOAL_P50_S, "p99_s": GOAL_P99_S},
    }
    result["goal_met"] = (
        result["consented_read"]["p50_s"] < GOAL_P50_S
        and result["consented_read"]["p99_s"] < GOAL_P99_S
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=40)
    parser.add_argument("--json-out", type=Path, default=Path("bench/results/access.json"))
    args = parser.parse_args()
    result = run(args.reads)
    cr, pr, cm = result["consented_read"], result["patient_read"], result["access_event_commit"]
    print(
        f"authorized {RECORD_BYTES // 1000} KB read, end to end (4 institutions, custody "
        f"{result['custody']['threshold']} of {len(result['custody']['custodians'])})"
    )
    print(f"  {'what':<34} {'p50 s':>8} {'p99 s':>8}")
    print(
        f"  {'clinician under consent':<34} {cr['p50_s']:>8.3f} {cr['p99_s']:>8.3f}"
        f"   goal < {GOAL_P50_S} / < {GOAL_P99_S}: {'met' if result['goal_met'] else 'NOT met'}"
    )
    print(f"  {'patient, own record':<34} {pr['p50_s']:>8.3f} {pr['p99_s']:>8.3f}")
    print(f"  {'access event commit alone':<34} {cm['p50_s']:>8.3f} {cm['p99_s']:>8.3f}")
    print(f"  read / commit-alone ratio (p50): {cr['p50_s'] / cm['p50_s']:.2f}x")
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results written to {args.json_out}")


if __name__ == "__main__":
    sys.exit(main())
