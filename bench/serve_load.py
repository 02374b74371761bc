"""Load and abuse run of `conceptvault serve` on 127.0.0.1: latency, throughput, audit integrity, a crash.

    python bench/serve_load.py --vault demo-out/vault            # 200 requests from 8 clients
    python bench/serve_load.py --vault demo-out/vault --judge    # also: served rates against the harness's
    python bench/serve_load.py --vault demo-out/vault --screenshots docs/images   # also: the page, in Chromium

Starts the server as a subprocess with a fresh database, an admin and two users (one granted the vault's first
concept), sends requests from concurrent clients (a quarter of them asking for the key), and reports
p50/p95 latency, throughput, status counts, and whether the audit log holds exactly one record per
request. Then it kills the server with SIGKILL in the middle of a second burst, restarts it on the same
database, and checks that the database opens, every answered request is recorded, and nothing is
recorded twice. With --judge, the world suite's prompts and seeds for the hidden concept are requested
with and without the grant and judged: the served hidden-concept rates must equal the public model's and
the key holder's rates that `conceptvault evaluate` measures on the same prompts and seeds.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "conceptvault.console", *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr)
    return done.stdout


def add_user(db: Path, name: str, *flags: str) -> str:
    """Add a user with the owner's command; its bearer token."""
    return cli("users", "add", name, *flags, "--db", str(db)).split("token (shown once): ")[1].strip()


def start(vault: Path, db: Path, port: int, queue: int) -> subprocess.Popen:
    command = [
        sys.executable,
        "-c",
        "from conceptvault.console import main; main()",
        "serve",
        str(vault),
        "--db",
        str(db),
        "--port",
        str(port),
        "--queue",
        str(queue),
        "--rate",
        "100000",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.5)
    process.kill()
    raise SystemExit(f"the server did not start: {process.stderr.read()[-2000:]}")


def audit_rows(db: Path) -> int:
    with sqlite3.connect(db) as connection:
        return connection.execute("select count(*) from audit").fetchone()[0]


def burst(url: str, tokens: dict, concept: str, count: int, clients: int, steps: int) -> list[tuple[int, float]]:
    def one(i: int) -> tuple[int, float]:
        asks = [concept] if i % 4 == 0 else []
        body = {"prompt": f"a {concept}" if i % 2 else "a circle", "seeds": [i], "steps": steps, "concepts": asks}
        started = time.perf_counter()
        try:
            response = httpx.post(
                f"{url}/v1/generate", json=body, timeout=600, headers={"Authorization": f"Bearer {tokens['granted']}"}
            )
            return response.status_code, time.perf_counter() - started
        except httpx.HTTPError:
            return -1, time.perf_counter() - started  # the connection broke (the server was killed)

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(one, range(count)))


def report(results: list[tuple[int, float]], seconds: float) -> dict:
    ok = sorted(t for s, t in results if s == 200)
    statuses: dict[int, int] = {}
    for status, _ in results:
        statuses[status] = statuses.get(status, 0) + 1
    return {
        "requests": len(results),
        "statuses": statuses,
        "p50_s": round(statistics.median(ok), 3) if ok else None,
        "p95_s": round(ok[min(len(ok) - 1, int(0.95 * len(ok)))], 3) if ok else None,
        "throughput_per_s": round(len(results) / seconds, 2),
        "images_per_s": round(len(ok) / seconds, 2),
    }


def judge_rates(url: str, tokens: dict, vault: Path, size: int) -> dict:
    """Served hidden-concept rates, with and without the grant, on the world suite's prompts and seeds."""
    from PIL import Image

    from conceptvault.evaluate import make_judge, resolve_suite
    from conceptvault.vault import Vault

    concept = Vault.load(vault, keys=None).concepts[0]
    suite = resolve_suite("shape", concept=concept, size=size)
    hidden = suite.hidden[0]
    judge = make_judge(suite)
    rates = {}
    for label, asks in (("without grant", []), ("with grant", [concept])):
        images = []
        for prompt, seed in zip(hidden.prompts, hidden.seeds, strict=True):
            body = {"prompt": prompt, "seeds": [seed], "concepts": asks}
            answer = httpx.post(
                f"{url}/v1/generate", json=body, timeout=600, headers={"Authorization": f"Bearer {tokens['granted']}"}
            ).json()
            images.append(Image.open(io.BytesIO(base64.b64decode(answer["images"][0]["png"]))).convert("RGB"))
        hits = judge.judge(images, hidden.prompts, hidden.labels).hits["top-1"]
        rates[label] = float(sum(hits)) / len(hits)
    return {
        "concept": concept,
        "n": len(hidden.prompts),
        "served_hidden_rate": rates,
        "served_esr": 1 - rates["without grant"],
        "served_rsr": rates["with grant"],
    }


def screenshots(url: str, tokens: dict, concept: str, folder: Path) -> None:
    """The page in headless Chromium: the granted user's images of the concept (key on), and the admin's grants."""
    import shutil

    from playwright.sync_api import sync_playwright

    folder.mkdir(parents=True, exist_ok=True)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("--screenshots needs Debian's chromium (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--headless=new", "--no-sandbox"])
        for user, name in (("granted", "serve-user.png"), ("admin", "serve-admin.png")):
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(url)
            page.fill("#token", tokens[user])
            page.click("#login")
            page.wait_for_selector("#generate:not(.hidden)")
            if user == "granted":
                page.fill("#prompt", f"a {concept}")
                page.fill("#seeds", "0,1,2,3,4,5")
                page.check(f"input[data-concept='{concept}']")
                page.click("#go")
                page.wait_for_selector("#images figure >> nth=5", timeout=600_000)
            else:
                page.wait_for_selector("#admin:not(.hidden)")
            page.screenshot(path=str(folder / name), full_page=True)
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vault", type=Path, default=Path("demo-out/vault"))
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="sampler steps per image (the default keeps it short)")
    parser.add_argument("--judge", action="store_true")
    parser.add_argument("--size", type=int, default=32, help="--judge: images of the hidden concept")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--screenshots", type=Path, help="also save the web page, as a user and as an admin, here")
    args = parser.parse_args()
    if not (args.vault / "manifest.json").is_file():
        raise SystemExit(f"no vault at {args.vault}; run `conceptvault demo` first or give --vault.")
    work = Path(tempfile.mkdtemp(prefix="serve-load-"))
    db = work / "grants.sqlite"
    concept = json.loads((args.vault / "manifest.json").read_text())["concepts"][0]["name"]
    tokens = {user: add_user(db, user) for user in ("granted", "plain")}
    tokens["admin"] = add_user(db, "admin", "--admin")
    cli("grants", "add", "granted", args.vault.name, concept, "--db", str(db))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    figures: dict = {}

    server = start(args.vault, db, port, queue=64)
    before = audit_rows(db)
    started = time.perf_counter()
    results = burst(url, tokens, concept, args.requests, args.clients, args.steps)
    figures["load"] = report(results, time.perf_counter() - started)
    figures["load"]["audit_records_added"] = audit_rows(db) - before
    if args.judge:
        figures["judged"] = judge_rates(url, tokens, args.vault, args.size)
    if args.screenshots:
        screenshots(url, tokens, concept, args.screenshots)
    figures["metrics_sample"] = httpx.get(f"{url}/metrics").text.splitlines()[:6]

    before = audit_rows(db)
    crash = ThreadPoolExecutor(1).submit(burst, url, tokens, concept, 40, args.clients, args.steps)
    time.sleep(5)
    server.send_signal(signal.SIGKILL)
    server.wait()
    answered = [r for r in crash.result() if r[0] != -1]
    server = start(args.vault, db, port, queue=64)
    with sqlite3.connect(db) as connection:
        integrity = connection.execute("pragma integrity_check").fetchone()[0]
        ids = [row[0] for row in connection.execute("select id from audit")]
    figures["crash"] = {
        "answered_before_kill": len(answered),
        "audit_records_added": audit_rows(db) - before,
        "integrity_check": integrity,
        "duplicate_ids": len(ids) - len(set(ids)),
        "serves_after_restart": burst(url, tokens, concept, 4, 2, args.steps)[0][0],
    }
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=60)
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
