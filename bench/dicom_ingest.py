"""DICOM ingest benchmark: C-STORE of many small instances with dcmtk's ``storescu``
into MedLedger and into Orthanc in the same run, then a WADO-RS retrieval of the study.

1. ``--instances`` (default 1000) copies of pydicom's ``CT_small.dcm`` (about 39 KB)
   with new SOP Instance UIDs, as ``--studies`` studies (default 1) of series of
   ``--per-series`` instances, written to a temporary directory.
2. Orthanc (Debian's package, ``make dicom-tools``), default storage (files on disk,
   SQLite index), with ``SyncStorageArea`` true (its default since 1.7.4: every file
   is fsynced before Success) and again with it false: one ``storescu`` run (one
   association, ``+sd`` directory scan) each, wall time -> instances/s.
3. A 4-institution MedLedger consortium: the same ``storescu`` run into hospital-a's
   DICOM listener (an allowed AE title mapped to a ``service`` identity, the PatientID
   linked to a ledger patient). Wall time of storescu (every instance fsynced in the
   gateway's spool before Success), then the time until every study is sealed and
   registered on chain (ingest-to-anchored: encrypted, erasure-coded over 4 storage
   services, the key split among the custodians, one ``record.register`` committed),
   and the transactions that took.
4. WADO-RS retrieval of the (first) study: MedLedger's ``/dicom-web/studies/{uid}``
   with a bearer token of the patient (a committed ``record.read``, key release,
   shards, decryption) vs Orthanc's ``/dicom-web/studies/{uid}`` (its DICOMweb plugin)
   or, without the plugin, ``GET /studies/{id}/archive`` (the report says which); and
   ``medledger record get`` of the study's record for scale.

Each target gets ``--rounds`` (default 2) storescu runs, each of fresh instances (new
UIDs: a resent instance would be a duplicate to Orthanc); the table shows medians and
the best run, as the machine is shared.

Numbers and ratios, no assertions (the goal line says whether MedLedger ingests at
least as many instances/s as Orthanc). Run from the repository root:
``.venv/bin/python bench/dicom_ingest.py [--instances 1000] [--studies 1]``
(results also go to ``bench/results/dicom_ingest.json``). Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import pydicom
from consortium import cpu_seconds  # bench/, on sys.path
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from storage import Consortium, say

_TESTS = Path(__file__).resolve().parent.parent / "tests" / "integration"
if str(_TESTS) not in sys.path:
    sys.path.insert(0, str(_TESTS))

from orthanc import Modality, Orthanc, orthanc_binary, running_orthanc  # noqa: E402

from medledger.client import Client  # noqa: E402
from medledger.crypto.keys import PrivateKey  # noqa: E402

SCU_AE = "BENCH_SCU"
PATIENT_ID = "BENCH-MRN-1"
SEAL_TIMEOUT_S = 900.0
# Debian's dcmtk leaves Nagle's algorithm on unless TCP_NODELAY=1 is set: storescu then
# waits for a delayed ACK (about 40 ms) twice per instance, whatever the receiver, and
# every figure would measure that timer. Set for storescu and for Orthanc (dcmtk inside).
NODELAY = {"TCP_NODELAY": "1"}
DICOM_MULTIPART = 'multipart/related; type="application/dicom"'


# ---- the instances ------------------------------------------------------------------------


def make_instances(folder: Path, n: int, studies: int, per_series: int) -> list[str]:
    """``n`` copies of CT_small.dcm with new SOP Instance UIDs; the study UIDs."""
    src = get_testdata_file("CT_small.dcm")
    assert src is not None
    template = pydicom.dcmread(src)
    folder.mkdir(parents=True)
    study_uids = [generate_uid() for _ in range(studies)]
    series_uid, last_study = "", -1
    for i in range(n):
        study = i * studies // n
        if i % per_series == 0 or study != last_study:
            series_uid, last_study = generate_uid(), study
        ds = template.copy()
        ds.PatientID = PATIENT_ID
        ds.StudyInstanceUID = study_uids[study]
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = i // per_series + 1
        ds.InstanceNumber = i % per_series + 1
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(folder / f"{i:06d}.dcm", enforce_file_format=True)
    return study_uids


def dcmtk(name: str) -> str:
    """dcmtk's tool (pynetdicom installs Python tools of the same names in the venv)."""
    for folder in [*os.environ.get("PATH", "").split(os.pathsep), "/usr/bin"]:
        path = Path(folder or ".") / name
        if path.is_file() and os.access(path, os.X_OK):
            r = subprocess.run([path, "--version"], capture_output=True, text=True)
            if "dcmtk" in r.stdout:
                return str(path)
    raise SystemExit(f"dcmtk's {name} is not installed: run 'make dicom-tools' as root")


def storescu(folder: Path, host: str, port: int, called: str) -> float:
    """One association, every file of ``folder``; the wall time in seconds."""
    cmd = [
        dcmtk("storescu"), "-aet", SCU_AE, "-aec", called, "-to", "60",
        "+sd", host, str(port), str(folder),
    ]  # fmt: skip
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **NODELAY})
    seconds = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(
            f"storescu failed ({r.returncode}):\n{r.stdout[-2000:]}{r.stderr[-2000:]}"
        )
    return seconds


# ---- Orthanc ------------------------------------------------------------------------------


def summary(rounds: list[dict[str, Any]], n: int) -> dict[str, Any]:
    """Median and best of the rounds' storescu times (``per_s`` from the median)."""
    times = [r["seconds"] for r in rounds]
    med = statistics.median(times)
    return {
        "seconds": med,
        "best_s": min(times),
        "per_s": n / med,
        "best_per_s": n / min(times),
        "cpu_s": statistics.median(r["cpu_s"] for r in rounds),
        "rounds": rounds,
    }


def bench_orthanc(
    folders: list[Path], n: int, study_uid: str, work: Path, *, sync: bool, wado: bool
) -> dict[str, Any]:
    label = "SyncStorageArea true" if sync else "SyncStorageArea false"
    scu = Modality(SCU_AE, "127.0.0.1", 104)  # Orthanc accepts C-STORE from known AEs only
    with running_orthanc(work, modalities={"bench": scu}, sync_storage=sync, env=NODELAY) as o:
        pid = o.process.pid
        rounds = []
        for i, folder in enumerate(folders):
            say(f"Orthanc ({label}), round {i + 1}: storescu of {n} instances ...")
            cpu0 = cpu_seconds([pid])
            seconds = storescu(folder, "127.0.0.1", o.dicom_port, o.ae_title)
            rounds.append({"seconds": seconds, "cpu_s": cpu_seconds([pid]) - cpu0})
            say(f"  {n} instances in {seconds:.2f}s ({n / seconds:.0f}/s)")
        stored = int(o.statistics()["CountInstances"])
        if stored != n * len(folders):
            raise RuntimeError(f"Orthanc holds {stored} instances, {n * len(folders)} were sent")
        out = summary(rounds, n)
        out.update(sync_storage=sync, instances=n)
        if wado:
            out["wado"] = orthanc_retrieve(o, study_uid)
    return out


def orthanc_retrieve(o: Orthanc, study_uid: str) -> dict[str, Any]:
    if o.dicomweb:
        how = "WADO-RS /dicom-web/studies/{uid} (DICOMweb plugin)"
        url = f"/dicom-web/studies/{study_uid}"
        headers = {"Accept": DICOM_MULTIPART}
    else:
        how = "GET /studies/{id}/archive (no DICOMweb plugin)"
        study_id = o.study_id(study_uid)
        url = f"/studies/{study_id}/archive"
        headers = {}
    times, size = [], 0
    for _ in range(3):
        t = time.perf_counter()
        resp = o.http.get(url, headers=headers)
        times.append(time.perf_counter() - t)
        resp.raise_for_status()
        size = len(resp.content)
    return {"how": how, "seconds": min(times), "all_s": times, "bytes": size}


# ---- MedLedger ----------------------------------------------------------------------------


class DicomConsortium(Consortium):
    """The storage benchmark's consortium, hospital-a's gateway sealing after 1 s."""

    def up(self) -> None:
        config = self.root / "hospital-a" / "config.json"
        cfg = json.loads(config.read_text())
        cfg["dicom"].update(quiet_s=1.0, retry_s=2.0)
        config.write_text(json.dumps(cfg, indent=2) + "\n")
        super().up()


def block_txs(c: Client, h0: int, h1: int) -> int:
    return sum(len(c.get_json(f"/api/v1/blocks/{h}")["tx_hashes"]) for h in range(h0 + 1, h1 + 1))


def bench_medledger(
    folders: list[Path], n: int, studies: int, study_uid: str, work: Path
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with DicomConsortium(work / "ml", 4) as cons:
        api = cons.api("hospital-a")
        admin = cons.admin("hospital-a")
        service, patient = PrivateKey.generate(), PrivateKey.generate()
        with Client(api, admin) as a:
            st = a.status()
            dicom = st["dicom"]
            a.enroll(service.id, "service")
            a.enroll(patient.id, "patient")
            a.enroll(str(dicom["gateway_id"]), "service")
            a.dicom_allow(SCU_AE, service.id)
            a.dicom_link_patient(PATIENT_ID, patient.id)
        with Client(api, patient) as me:
            pids = cons.pids()
            rounds: list[dict[str, Any]] = []
            known: set[str] = set()
            first: list[dict[str, Any]] = []
            for i, folder in enumerate(folders):
                h0 = int(me.status()["height"])
                cpu0 = cpu_seconds(pids)
                say(f"MedLedger, round {i + 1}: storescu of {n} instances into {dicom['ae_title']}")
                t0 = time.perf_counter()
                seconds = storescu(folder, dicom["host"], int(dicom["port"]), dicom["ae_title"])
                cpu_ingest = cpu_seconds(pids) - cpu0
                say(
                    f"  {n} instances in {seconds:.2f}s ({n / seconds:.0f}/s); waiting for the seal"
                )
                deadline = time.monotonic() + SEAL_TIMEOUT_S
                new: list[dict[str, Any]] = []
                while time.monotonic() < deadline:
                    new = [
                        r
                        for r in me.list_records(patient.id)
                        if r["type"] == "imaging-study" and r["record_id"] not in known
                    ]
                    if len(new) >= studies:
                        break
                    time.sleep(0.1)
                anchored = time.perf_counter() - t0
                if len(new) < studies:
                    raise RuntimeError(f"only {len(new)} study records after {SEAL_TIMEOUT_S}s")
                cpu_total = cpu_seconds(pids) - cpu0
                h1 = int(me.status()["height"])
                txs = block_txs(me, h0, h1)
                known.update(r["record_id"] for r in new)
                first = first or new
                say(f"  anchored after {anchored:.2f}s: {len(new)} record(s), {txs} transaction(s)")
                rounds.append(
                    {
                        "seconds": seconds,
                        "cpu_s": cpu_ingest,
                        "ingest_to_anchored_s": anchored,
                        "cpu_to_anchored_s": cpu_total,
                        "records": len(new),
                        "transactions": txs,
                        "blocks": h1 - h0,
                    }
                )
            out = summary(rounds, n)
            anchored_med = statistics.median(r["ingest_to_anchored_s"] for r in rounds)
            out.update(
                instances=n,
                ingest_to_anchored_s=anchored_med,
                anchored_per_s=n / anchored_med,
                cpu_to_anchored_s=statistics.median(r["cpu_to_anchored_s"] for r in rounds),
                records=rounds[0]["records"],
                transactions=max(r["transactions"] for r in rounds),
                blocks=max(r["blocks"] for r in rounds),
            )
            out["wado"] = medledger_wado(api, me, study_uid)
            rec = min(first, key=lambda r: r["height"])
            times = []
            for i in range(3):
                t = time.perf_counter()
                me.get_record(rec["record_id"], work / f"get-{i}.tar", purpose="patient-access")
                times.append(time.perf_counter() - t)
                (work / f"get-{i}.tar").unlink()
            out["record_get"] = {"seconds": min(times), "all_s": times}
    return out


def medledger_wado(api: str, me: Client, study_uid: str) -> dict[str, Any]:
    try:
        token = me.issue_token(["read"], 3_600_000)
    except Exception as exc:  # a node without tokens yet: say so, measure the rest
        return {"error": f"no bearer token: {exc}"}
    headers = {"Authorization": f"Bearer {token}", "Accept": DICOM_MULTIPART}
    url = f"{api}/dicom-web/studies/{study_uid}?purpose=patient-access"
    times, size = [], 0
    with httpx.Client(timeout=300.0) as http:
        # the study index is filled just after the record registers: wait for it
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:
            probe = http.get(
                f"{api}/dicom-web/studies?StudyInstanceUID={study_uid}",
                headers={"Authorization": f"Bearer {token}", "Accept": "application/dicom+json"},
            )
            if probe.status_code == 200 and probe.content.strip() not in (b"", b"[]"):
                break
            time.sleep(0.2)
        for _ in range(3):
            t = time.perf_counter()
            resp = http.get(url, headers=headers)
            times.append(time.perf_counter() - t)
            if resp.status_code != 200:
                return {"error": f"{resp.status_code} {resp.text[:300]}"}
            size = len(resp.content)
    return {"how": "WADO-RS /dicom-web/studies/{uid}", "seconds": min(times), "all_s": times,
            "bytes": size}  # fmt: skip


# ---- the report ---------------------------------------------------------------------------


def report(r: dict[str, Any]) -> list[tuple[str, bool]]:
    n = r["instances"]
    o_sync, o_nosync, ml = r["orthanc_sync"], r.get("orthanc_nosync"), r["medledger"]
    print(
        f"== DICOM ingest: {n} instances of CT_small.dcm ({r['instance_bytes']} bytes each), "
        f"{r['studies']} study(ies) per round, dcmtk storescu (one association), "
        f"{r['rounds']} round(s), fresh UIDs each round"
    )
    print(
        f"  ({r['cpus']} CPUs; 1-min load average {r['loadavg_start']:.2f} at start, "
        f"{r['loadavg_end']:.2f} at end)"
    )
    print(
        f"  {'':50s} {'median s':>8s} {'inst/s':>7s} {'best/s':>7s} {'vs Orthanc':>10s} "
        f"{'CPU s':>6s}"
    )
    base = o_sync["per_s"]

    def row(name: str, d: dict[str, Any]) -> None:
        best = f"{d['best_per_s']:7.0f}" if "best_per_s" in d else f"{'-':>7s}"
        print(
            f"  {name:50s} {d['seconds']:8.2f} {d['per_s']:7.0f} {best} "
            f"{d['per_s'] / base:9.2f}x {d['cpu_s']:6.2f}"
        )

    row("Orthanc 1.10, SyncStorageArea true (default)", o_sync)
    if o_nosync is not None:
        row("Orthanc 1.10, SyncStorageArea false", o_nosync)
    row("MedLedger C-STORE (spooled, journal synced)", ml)
    row(
        "MedLedger ingest-to-anchored (sealed, on chain)",
        {
            "seconds": ml["ingest_to_anchored_s"],
            "per_s": ml["anchored_per_s"],
            "cpu_s": ml["cpu_to_anchored_s"],
        },
    )
    print(
        f"  MedLedger: {ml['records']} record(s), {ml['transactions']} transaction(s) in "
        f"{ml['blocks']} block(s) for {n} instances (per round, at most)"
    )
    print("  (CPU s: Orthanc's process / the 4 node processes + this script; 2 cores)")

    print("== retrieval of the first study")
    ow, mw = o_sync.get("wado"), ml.get("wado", {})
    if ow:
        print(f"  Orthanc   {ow['how']:54s} {ow['seconds']:7.3f} s  {ow['bytes']:>10d} bytes")
    if "error" in mw:
        print(f"  MedLedger WADO-RS not measured: {mw['error']}")
    else:
        ratio = f"  {mw['seconds'] / ow['seconds']:.2f}x Orthanc" if ow else ""
        print(
            f"  MedLedger {mw['how']:54s} {mw['seconds']:7.3f} s  {mw['bytes']:>10d} bytes{ratio}"
        )
    print(
        f"  MedLedger {'record get (the study archive, fsynced)':54s} {ml['record_get']['seconds']:7.3f} s"
    )

    checks = [
        (
            f"MedLedger ingests at least as many instances/s as Orthanc (default config, "
            f"medians): {ml['per_s']:.0f}/s vs {base:.0f}/s ({ml['per_s'] / base:.2f}x)",
            ml["per_s"] >= base,
        ),
        (
            f"anchoring takes a bounded number of transactions: {ml['transactions']} for "
            f"{ml['records']} study record(s)",
            ml["transactions"] <= 4 * ml["records"],
        ),
    ]
    print("== goals")
    for text, ok in checks:
        print(f"  {'met    ' if ok else 'NOT met'}  {text}")
    return checks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--instances", type=int, default=1000)
    ap.add_argument("--studies", type=int, default=1)
    ap.add_argument("--per-series", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=2, help="storescu runs per target (median)")
    ap.add_argument("--no-nosync", action="store_true", help="skip Orthanc without fsync")
    ap.add_argument("--workdir", type=Path, default=None, help="parent of the temp dir (/tmp)")
    ap.add_argument(
        "--json-out", type=Path, default=Path(__file__).parent / "results" / "dicom_ingest.json"
    )
    args = ap.parse_args()
    if args.instances < 1 or not 1 <= args.studies <= args.instances or args.per_series < 1:
        ap.error("need --instances >= --studies >= 1 and --per-series >= 1")
    if args.rounds < 1:
        ap.error("--rounds must be >= 1")
    if orthanc_binary() is None:
        raise SystemExit("Orthanc is not installed: run 'make dicom-tools' as root")
    dcmtk("storescu")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="medledger-dicom-", dir=args.workdir))
    began = time.perf_counter()
    results: dict[str, Any] = {
        "instances": args.instances,
        "studies": args.studies,
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg()[0],
    }
    try:
        folders, study_uids = [], []
        for r in range(args.rounds):
            folder = work / f"instances-{r}"
            say(f"writing {args.instances} instances in {folder} ...")
            uids = make_instances(folder, args.instances, args.studies, args.per_series)
            folders.append(folder)
            study_uids.append(uids[0])
        results["instance_bytes"] = (folders[0] / "000000.dcm").stat().st_size
        # Orthanc and MedLedger each get fresh instances every round (a resent instance
        # would be a duplicate to Orthanc); the first round's first study is retrieved
        results["orthanc_sync"] = bench_orthanc(
            folders, args.instances, study_uids[0], work / "orthanc-sync", sync=True, wado=True
        )
        if not args.no_nosync:
            results["orthanc_nosync"] = bench_orthanc(
                folders, args.instances, study_uids[0], work / "orthanc-nosync", sync=False,
                wado=False,
            )  # fmt: skip
        results["medledger"] = bench_medledger(
            folders, args.instances, args.studies, study_uids[0], work
        )
    finally:
        say(f"removing {work} ...")
        shutil.rmtree(work, ignore_errors=True)
    results["loadavg_end"] = os.getloadavg()[0]
    results["seconds"] = time.perf_counter() - began
    say(f"done in {results['seconds']:.0f}s")
    checks = report(results)
    results["goals"] = [{"goal": t, "met": ok} for t, ok in checks]
    if args.json_out is not None:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"results written to {args.json_out}")


if __name__ == "__main__":
    main()
