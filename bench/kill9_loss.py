"""What ``kill -9`` loses: answered requests missing from the decision store, and how recent.

Starts a real ``abstain serve`` (the shipped model, a SQLite state dir or ``--database-url``),
sends predictions from 4 client threads, kills the server with SIGKILL after a random 2–4 s,
and compares every answered request (its X-Request-Id, the time its answer arrived) with the
rows in the store. Prints, per trial, how many answered requests were lost and the oldest lost
answer's age at the kill; docs/loop.md states the bound this measures::

    python bench/kill9_loss.py --trials 5
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from serve.feedback.store import Store

ROOT = Path(__file__).resolve().parents[1]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def trial(location: str, seed: int, logfile: Path) -> tuple[int, int, float]:
    port = _port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("ABSTAIN_")},
           "ABSTAIN_AUDIT_RATE": "0.05", "ABSTAIN_STORE_INPUTS": "true"}
    env["ABSTAIN_DATABASE_URL" if "://" in location else "ABSTAIN_STATE_DIR"] = location
    log = logfile.open("w")
    proc = subprocess.Popen([sys.executable, "-m", "serve.cli.main", "serve", str(ROOT / "models"),
                             "--port", str(port), "--log-level", "warning"], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(url + "/v2/health/ready", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("the server did not start")
        time.sleep(0.2)
    answered: list[tuple[str, float]] = []
    stop = threading.Event()
    body = {"instances": [[0.1 * i for i in range(40)]] * 4}

    def client() -> None:
        with httpx.Client() as c:
            while not stop.is_set():
                try:
                    r = c.post(url + "/v1/models/mnist1d-maxsup/predict", json=body, timeout=5)
                except httpx.HTTPError:
                    return
                if r.status_code == 200:
                    answered.append((r.headers["x-request-id"], time.time()))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(random.Random(seed).uniform(2.0, 4.0))
    proc.send_signal(signal.SIGKILL)
    killed = time.time()
    proc.wait()
    log.close()
    stop.set()
    for t in threads:
        t.join()
    store = Store(location)
    with store._tx() as cur:
        cur.execute("SELECT DISTINCT request_id FROM records")
        stored = {r[0] for r in cur.fetchall()}
    store.close()
    lost = [(rid, at) for rid, at in answered if at <= killed and rid not in stored]
    oldest = max((killed - at for _, at in lost), default=0.0)
    return len(answered), len(lost), oldest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--database-url", default=None)
    args = ap.parse_args()
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.trials):
            loc = args.database_url or str(Path(tmp) / f"state{i}")
            logfile = Path(tmp) / f"server{i}.log"
            n, lost, oldest = trial(loc, i, logfile)
            worst = max(worst, oldest)
            print(f"trial {i}: {n} requests answered, {lost} lost by kill -9, the oldest lost "
                  f"answered {oldest:.3f} s before the kill", flush=True)
            for line in logfile.read_text().splitlines():
                if "WARNING" in line or "ERROR" in line:
                    print("   server:", line[:300])
    print(f"worst: {worst:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
