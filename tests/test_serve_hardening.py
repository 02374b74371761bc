"""The server and its database under a hostile or careless user: grants that mean what they say (checked
again when a request leaves the queue, bound to the vault's fingerprint), no password in any line, a
private database file, and one clear line or a 4xx for every bad input."""

from __future__ import annotations

import json
import math
import os
import stat
import sys
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from conceptvault.cli import main
from conceptvault.errors import ConceptVaultError
from conceptvault.serve import Limits, create_app
from conceptvault.serve import engine as engine_module
from conceptvault.serve.app import Served
from conceptvault.serve.engine import Engine, Job, NoLongerGranted
from conceptvault.serve.store import AccessStore, shown_url

STAR = "a" * 64  # the public fingerprint of the served vault
OTHER = "b" * 64  # another vault's
QUICK_ARGS = ["--model-updates", "2", "--sampler-steps", "2", "--m", "2"]


def run(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return exit_.value.code, captured.out, captured.err


def one_line_error(code: int, out: str, err: str) -> bool:
    return code == 1 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in out + err


class Gate:
    """A stand-in for generate_images that holds the worker until released and records each call."""

    def __init__(self):
        self.calls, self.release, self.entered = [], threading.Event(), threading.Event()

    def __call__(self, pipe, prompts, seeds, **options):
        self.calls.append((list(prompts), options["keys"], options["height"], options["width"], options["steps"]))
        self.entered.set()
        self.release.wait(10)
        side = options["height"] or 8
        return [Image.new("RGB", (side, options["width"] or side)) for _ in prompts]


@pytest.fixture
def gate(monkeypatch) -> Gate:
    gate = Gate()
    monkeypatch.setattr(engine_module, "generate_images", gate)
    return gate


@pytest.fixture
def make_server(gate, tmp_path):
    """Apps over a fake pipeline serving 'star.vault' (fingerprint STAR, a key for 'star', 64-pixel images),
    with users ada and root (an administrator)."""
    engines = []

    def make(**limits):
        store = AccessStore(str(tmp_path / f"grants{len(engines)}.sqlite"))
        tokens = {"ada": store.add_user("ada"), "root": store.add_user("root", admin=True)}
        engine = Engine({"star.vault": object()}, queue_size=8, max_batch=8)
        engines.append(engine)
        served = {"star.vault": Served(concepts=["star"], steps=2, guidance=3.0, size=64, fingerprint=STAR)}
        app = create_app(engine, served, store, Limits(**{"burst": 1000, "rate_per_minute": 60000, **limits}))
        return TestClient(app), store, tokens, gate

    yield make
    gate.release.set()
    for engine in engines:
        engine.stop()


@pytest.fixture
def server(make_server):
    return make_server()


def ask(client, token, **body):
    body = {"prompt": "a star", "seeds": [0], "steps": 2, **body}
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.post("/v1/generate", json=body, headers=headers)


def admin(tokens) -> dict:
    return {"Authorization": f"Bearer {tokens['root']}"}


# -- security 1: a grant revoked while a request waits stops it -----------------------------------------


def test_a_grant_revoked_while_the_request_waits_in_the_queue_stops_it(server):
    client, store, tokens, gate = server
    grant = store.grant("ada", "star.vault", "star", fingerprint=STAR)
    answers = {}
    first = threading.Thread(target=lambda: answers.setdefault("first", ask(client, tokens["ada"])))
    first.start()
    assert gate.entered.wait(5)  # the worker is busy with the first request
    second = threading.Thread(
        target=lambda: answers.setdefault("keyed", ask(client, tokens["ada"], concepts=["star"], prompt="b"))
    )
    second.start()
    deadline = time.monotonic() + 5
    while client.get("/healthz").json()["queue"] < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    store.revoke(grant)  # revoked while the keyed request waits
    gate.release.set()
    first.join(10), second.join(10)
    assert answers["first"].status_code == 200
    assert answers["keyed"].status_code == 403 and "revoked" in answers["keyed"].json()["error"]
    assert all(keys is None for _, keys, *_ in gate.calls)  # the key was never switched on
    assert sorted(r["status"] for r in store.history("ada")) == [200, 403]  # both recorded


def test_a_request_in_flight_has_its_audit_row_before_it_is_answered_and_one_row_after(server):
    client, store, tokens, gate = server
    answers = {}
    worker = threading.Thread(target=lambda: answers.setdefault("first", ask(client, tokens["ada"], prompt="a")))
    worker.start()
    assert gate.entered.wait(5)  # the worker holds the request: were the server killed now, this row would stay
    (in_flight,) = store.history("ada")
    assert in_flight["status"] == 202 and in_flight["prompt"] == "a" and "not answered" in in_flight["outcome"]
    gate.release.set()
    worker.join(10)
    assert answers["first"].status_code == 200
    (answered,) = store.history("ada")
    assert answered["id"] == in_flight["id"] and answered["status"] == 200 and len(answered["image_hashes"]) == 1


def test_the_engine_runs_no_job_whose_authorization_no_longer_holds(gate):
    engine = Engine({"v": object()}, queue_size=4, max_batch=8)
    allowed = {"granted": True}
    blocker = engine.submit(Job("v", "a", "", [0], 2, 3.0, None, None, ()))
    assert gate.entered.wait(5)
    keyed = engine.submit(Job("v", "b", "", [1], 2, 3.0, None, None, ("star",), lambda: allowed["granted"]))
    allowed["granted"] = False
    gate.release.set()
    blocker.result(timeout=5)
    with pytest.raises(NoLongerGranted):
        keyed.result(timeout=5)
    engine.stop()
    assert [prompts for prompts, *_ in gate.calls] == [["a"]]


# -- security 2: grants bind to the vault's fingerprint ------------------------------------------------


def test_a_grant_for_another_vault_of_the_same_folder_name_unlocks_nothing(server):
    client, store, tokens, gate = server
    gate.release.set()
    store.grant("ada", "star.vault", "star", fingerprint=OTHER)  # a grant for another 'star.vault'
    assert ask(client, tokens["ada"], concepts=["star"]).status_code == 403
    me = client.get("/v1/me", headers={"Authorization": f"Bearer {tokens['ada']}"}).json()
    assert me["vaults"]["star.vault"]["granted"] == []
    store.grant("ada", "star.vault", "star", fingerprint=STAR)
    assert ask(client, tokens["ada"], concepts=["star"]).status_code == 200


def test_an_admin_grant_binds_to_the_served_vaults_fingerprint(server):
    client, store, tokens, gate = server
    made = client.post(
        "/v1/admin/grants", json={"user": "ada", "vault": "star.vault", "concept": "star"}, headers=admin(tokens)
    )
    assert made.status_code == 200
    assert [g["fingerprint"] for g in store.grants("ada")] == [STAR]


@pytest.fixture(scope="module")
def vault_folder(sd1_path, tmp_path_factory) -> Path:
    """A small vault with a key for 'star', made through the command line."""
    out = tmp_path_factory.mktemp("vaults") / "star.vault"
    with pytest.raises(SystemExit) as exit_:
        main(["hide", str(sd1_path), "--concept", "star", "--out", str(out), "--device", "cpu", *QUICK_ARGS])
    assert exit_.value.code == 0
    return out


def test_grants_add_binds_to_the_vaults_fingerprint(vault_folder, tmp_path, capsys):
    from conceptvault.vault import read_manifest

    db = tmp_path / "grants.sqlite"
    AccessStore(str(db)).add_user("ada")
    code, out, err = run(capsys, "grants", "add", "ada", vault_folder, "star", "--db", db, "--days", "2")
    assert code == 0, err
    (grant,) = AccessStore(str(db)).grants()
    assert grant["fingerprint"] == read_manifest(vault_folder).public_fingerprint and grant["live"]
    assert grant["vault"] == "star.vault"


@pytest.mark.parametrize(
    "vault, concept, days, message",
    [
        ("{folder}", "moon", None, "no key for 'moon'"),
        ("{tmp}/nowhere", "star", None, "not a ConceptVault vault"),
        ("star.vault", "star", None, "not a ConceptVault vault"),  # a folder name, not the vault
        ("{folder}", "star", "-1", "--days must be above 0"),
        ("{folder}", "star", "0", "--days must be above 0"),
        ("{folder}", "star", "nan", "--days must be a finite number"),
        ("{folder}", "star", "inf", "--days must be a finite number"),
        ("{folder}", "star", "1e12", "--days must be above 0 and at most"),
    ],
)
def test_grants_add_refuses_what_can_never_match(vault_folder, tmp_path, capsys, vault, concept, days, message):
    db = tmp_path / "grants.sqlite"
    AccessStore(str(db)).add_user("ada")
    vault = vault.format(folder=vault_folder, tmp=tmp_path)
    extra = ["--days", days] if days else []
    code, out, err = run(capsys, "grants", "add", "ada", vault, concept, "--db", db, *extra)
    assert one_line_error(code, out, err) and message in err, err
    assert AccessStore(str(db)).grants() == []


# -- security 3: no password in any line ---------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://u:secretpw@127.0.0.1:1/db",
        "postgresql://u:secretpw@127.0.0.1:1/db",
        "mysql+nosuchdriver://u:secretpw@host/db",
        "nosuchscheme://u:secretpw@host/db",
        "postgresql://u:secretpw@[bad",
    ],
)
def test_a_database_password_is_never_printed(url, capsys):
    code, out, err = run(capsys, "users", "list", "--db", url)
    assert one_line_error(code, out, err) and "secretpw" not in out + err and "***" in err, err


def test_shown_url_masks_the_password_of_any_url():
    assert "secretpw" not in shown_url("postgresql+psycopg://u:secretpw@h:5432/db?sslmode=require")
    assert "secretpw" not in shown_url("weird//u:secretpw@h/db:[x")
    assert shown_url("sqlite:///grants.sqlite") == "sqlite:///grants.sqlite"


# -- security 4: the database is its owner's only ------------------------------------------------------


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")
def test_the_grants_database_and_its_wal_are_created_owner_only(tmp_path):
    old = os.umask(0o022)
    try:
        store = AccessStore(str(tmp_path / "grants.sqlite"))
        store.add_user("ada")
        with store.session():  # an open connection keeps the -wal and -shm files
            files = sorted(tmp_path.iterdir())
            assert {f.name for f in files} >= {"grants.sqlite", "grants.sqlite-wal", "grants.sqlite-shm"}
            assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files), [
                (f.name, oct(f.stat().st_mode)) for f in files
            ]
    finally:
        os.umask(old)


# -- the grants database: silent wrong results and tracebacks ------------------------------------------


@pytest.mark.parametrize("db", ["", "sqlite://", "sqlite:///:memory:", "  "])
def test_an_in_memory_database_is_refused(db, capsys):
    code, out, err = run(capsys, "users", "add", "zed", "--db", db)
    assert one_line_error(code, out, err) and "token" not in out, err


@pytest.mark.parametrize("content", [os.urandom(4096), b"SQLite format 3\x00" + b"\x00" * 80, b"just text\n"])
def test_users_list_on_a_file_that_is_no_database_is_one_line(content, tmp_path, capsys):
    db = tmp_path / "not.sqlite"
    db.write_bytes(content)
    code, out, err = run(capsys, "users", "list", "--db", db)
    assert one_line_error(code, out, err) and "cannot open the database" in err, err


def test_users_list_on_a_truncated_database_is_one_line(tmp_path, capsys):
    db = tmp_path / "grants.sqlite"
    store = AccessStore(str(db))
    for n in range(300):
        store.add_user(f"user{n}")
    store.engine.dispose()
    for extra in (db.with_name("grants.sqlite-wal"), db.with_name("grants.sqlite-shm")):
        extra.unlink(missing_ok=True)
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2])
    code, out, err = run(capsys, "users", "list", "--db", db)
    assert one_line_error(code, out, err), err


@pytest.mark.skipif(not Path("/etc/passwd").is_file(), reason="needs /etc/passwd")
def test_users_list_on_a_system_file_is_one_line_and_changes_nothing(capsys):
    before = Path("/etc/passwd").read_bytes()
    code, out, err = run(capsys, "users", "list", "--db", "sqlite:////etc/passwd")
    assert one_line_error(code, out, err) and Path("/etc/passwd").read_bytes() == before


# -- days and ids out of range: a 4xx from the API, one line from the command line ---------------------


@pytest.mark.parametrize("days", [1e12, -1e9, 0, -1, "NaN", "Infinity", "-Infinity", True])
def test_the_admin_api_refuses_days_out_of_range_with_a_4xx(server, days):
    client, store, tokens, _ = server
    body = '{"user": "ada", "vault": "star.vault", "concept": "star", "days": ' + json.dumps(days) + "}"
    if isinstance(days, str):
        body = body.replace(f'"{days}"', days)  # the bare constant Python's JSON reader accepts
    response = client.post(
        "/v1/admin/grants", content=body, headers={**admin(tokens), "Content-Type": "application/json"}
    )
    assert 400 <= response.status_code < 500, response.text
    assert store.grants() == []


@pytest.mark.parametrize("grant_id", [2**63, 2**64 + 5, 10**30, 0, -1])
def test_revoking_an_id_out_of_range_is_a_404_and_one_line(server, grant_id, capsys, tmp_path):
    client, store, tokens, _ = server
    response = client.delete(f"/v1/admin/grants/{grant_id}", headers=admin(tokens))
    assert response.status_code in (404, 422), response.text
    code, out, err = run(capsys, "grants", "revoke", grant_id, "--db", tmp_path / "grants.sqlite")
    assert one_line_error(code, out, err), err


def test_check_days_accepts_the_sane_range():
    from conceptvault.serve.store import check_days

    for days in (None, 0.5, 1, 365, 36_525):
        check_days(days)
    for days in (math.nan, math.inf, -math.inf, 0, -0.0, 36_526, 1e300):
        with pytest.raises(ConceptVaultError):
            check_days(days)


# -- the server: limits that follow the model, anonymous callers, headers, strict bodies ---------------


@pytest.mark.parametrize(
    "body, status",
    [
        (dict(height=1024, width=1024, steps=1), 422),  # 16 times the model's 64-pixel side
        (dict(height=136), 422),  # just past twice the model's side
        (dict(height=128, width=128), 200),
        (dict(steps=100, seeds=list(range(8))), 200),  # 800 units: the most one request may ask
        (dict(steps=100, seeds=list(range(8)), height=72), 422),  # a little more than 800
        (dict(steps=100, seeds=list(range(4)), height=128, width=128), 422),  # 1600 units
    ],
)
def test_limits_follow_the_models_own_size_and_bound_one_requests_work(server, body, status):
    client, store, tokens, gate = server
    gate.release.set()
    response = ask(client, tokens["ada"], **body)
    assert response.status_code == status, response.text
    if status == 422:
        assert gate.calls == []


def test_each_user_has_a_budget_of_work_over_time_and_others_keep_theirs(make_server):
    client, store, tokens, gate = make_server(work_burst=100, work_per_minute=0.001)
    carol = store.add_user("carol")
    gate.release.set()
    heavy = dict(steps=40, seeds=[0, 1])  # 80 units of work: the model's own size, 40 steps, 2 images
    assert ask(client, tokens["ada"], **heavy).status_code == 200
    refused = ask(client, tokens["ada"], **heavy)
    assert refused.status_code == 429 and "share of the server" in refused.json()["error"]
    assert ask(client, tokens["ada"], steps=2).status_code == 200  # small requests still fit what is left
    assert ask(client, carol, **heavy).status_code == 200  # one user's spending is not another's
    assert [r["status"] for r in store.history("ada")][::-1] == [200, 429, 200]  # newest first


def test_unauthenticated_callers_are_rate_limited_per_address_and_store_no_prompt(make_server):
    client, store, tokens, gate = make_server(anonymous_burst=3, anonymous_per_minute=0.001)
    gate.release.set()
    before = store.audit_count()
    statuses = [ask(client, None, prompt="p" * 400).status_code for _ in range(8)]
    statuses += [ask(client, "not-a-token").status_code for _ in range(2)]
    statuses.append(
        client.post("/v1/generate", content=b"{bad", headers={"Content-Type": "application/json"}).status_code
    )
    statuses.append(client.get("/v1/admin/grants").status_code)
    assert statuses[:3] == [401, 401, 401] and set(statuses[3:]) == {429}
    assert store.audit_count() == before + 3  # refusals beyond the rate write nothing
    assert all(r["prompt"] is None and r["user"] is None for r in store.history(limit=3))
    assert ask(client, tokens["ada"]).status_code != 429  # a user with a token is not held back by others


def test_an_authenticated_422_and_a_non_admin_on_an_admin_route_are_recorded_with_the_user(server):
    client, store, tokens, gate = server
    headers = {"Authorization": f"Bearer {tokens['ada']}"}
    assert client.post("/v1/generate", json={"prompt": 5}, headers=headers).status_code == 422
    assert client.get("/v1/admin/grants", headers=headers).status_code == 403
    assert client.delete("/v1/admin/grants/1", headers=headers).status_code == 403
    assert [r["status"] for r in store.history("ada")] == [403, 403, 422]


def test_every_response_carries_the_security_headers(server):
    client, store, tokens, gate = server
    gate.release.set()
    responses = [
        client.get("/"),
        client.get("/healthz"),
        client.get("/metrics"),
        client.get("/docs"),
        client.get("/v1/me"),
        ask(client, tokens["ada"]),
        ask(client, tokens["ada"], seeds=["3"]),
        client.post("/v1/generate", content=b"x" * 40_000, headers={"Content-Type": "application/json"}),
        client.get("/no/such/route"),
    ]
    for response in responses:
        assert response.headers["X-Frame-Options"] == "DENY", response.url
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        policy = response.headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in policy and "default-src 'none'" in policy
    page_policy = responses[0].headers["Content-Security-Policy"]
    assert "script-src 'sha256-" in page_policy and "unsafe-inline" not in page_policy


def test_the_page_policy_allows_exactly_the_pages_own_script():
    import base64
    import hashlib
    import re

    from conceptvault.serve.app import _PAGE_POLICY
    from conceptvault.serve.page import PAGE

    (script,) = re.findall(r"<script>(.*?)</script>", PAGE, flags=re.S)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}';" in _PAGE_POLICY


@pytest.mark.parametrize(
    "body",
    [
        {"seeds": ["3"]},
        {"seeds": [True]},
        {"seeds": [1.5]},
        {"steps": "2"},
        {"steps": 2.5},
        {"prompt": 5},
        {"concepts": "star"},
        {"guidance": "7"},
        {"height": True},
    ],
)
def test_request_bodies_are_read_strictly(server, body):
    client, store, tokens, gate = server
    response = ask(client, tokens["ada"], **body)
    assert response.status_code == 422, response.text
    assert gate.calls == []


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_a_non_finite_guidance_is_a_422(server, constant):
    client, store, tokens, gate = server
    body = '{"prompt": "a star", "guidance": ' + constant + "}"
    response = client.post(
        "/v1/generate",
        content=body,
        headers={"Authorization": f"Bearer {tokens['ada']}", "Content-Type": "application/json"},
    )
    assert response.status_code == 422, response.text


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--rate", "nan", "--rate must be a finite number above 0"),
        ("--rate", "0", "--rate must be a finite number above 0"),
        ("--rate", "-5", "--rate must be a finite number above 0"),
        ("--rate", "inf", "--rate must be a finite number above 0"),
        ("--port", "70000", "--port must be a finite number from 1 to 65535"),
        ("--port", "0", "--port must be at least 1"),
        ("--queue", "1000000000", "--queue must be a finite number from 1 to"),
        ("--max-batch", "100000", "--max-batch must be a finite number from 1 to"),
    ],
)
def test_serve_refuses_impossible_options_before_loading(tmp_path, capsys, option, value, message):
    code, out, err = run(capsys, "serve", tmp_path / "no.vault", "--db", tmp_path / "g.sqlite", option, value)
    assert one_line_error(code, out, err) and message in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["rate_per_minute", "anonymous_per_minute", "size_factor", "max_work"])
@pytest.mark.parametrize("value", [math.nan, math.inf, 0.0, -1.0])
def test_server_limits_must_be_finite_and_positive(name, value):
    with pytest.raises(ConceptVaultError, match=name):
        Limits(**{name: value})


# -- the queue: callers in turn, a caller who gave up leaves it -----------------------------------------


def test_a_small_request_behind_another_callers_large_ones_waits_for_one_call_only(gate):
    engine = Engine({"v": object()}, queue_size=16, max_batch=8)

    def job(user, prompt, steps):  # distinct steps: no two of them share a call
        return Job("v", prompt, "", list(range(8 if user == "eve" else 1)), steps, 3.0, None, None, (), user=user)

    running = engine.submit(job("eve", "e1", 50))
    assert gate.entered.wait(5)
    waiting = [engine.submit(job("eve", f"e{n}", 50 + n)) for n in (2, 3, 4)]
    small = engine.submit(job("ada", "a1", 2))
    gate.release.set()
    for future in [running, *waiting, small]:
        future.result(timeout=5)
    engine.stop()
    order = [prompts[0] for prompts, *_ in gate.calls]
    assert order == ["e1", "a1", "e2", "e3", "e4"]


def test_one_caller_cannot_fill_the_queue(gate):
    from conceptvault.serve.engine import QueueFull

    engine = Engine({"v": object()}, queue_size=8, max_batch=8, max_per_user=2)
    engine.submit(Job("v", "first", "", [0], 2, 3.0, None, None, (), user="eve"))
    assert gate.entered.wait(5)
    engine.submit(Job("v", "a", "", [0], 3, 3.0, None, None, (), user="eve"))
    engine.submit(Job("v", "b", "", [0], 4, 3.0, None, None, (), user="eve"))
    with pytest.raises(QueueFull):
        engine.submit(Job("v", "c", "", [0], 5, 3.0, None, None, (), user="eve"))
    engine.submit(Job("v", "d", "", [0], 5, 3.0, None, None, (), user="ada"))  # another caller still gets in
    gate.release.set()
    engine.stop()


def test_a_request_whose_caller_gave_up_is_taken_out_of_the_queue(make_server):
    client, store, tokens, gate = make_server(timeout_seconds=0.3)
    answers = {}
    first = threading.Thread(target=lambda: answers.setdefault("first", ask(client, tokens["ada"], prompt="a")))
    first.start()
    assert gate.entered.wait(5)
    assert ask(client, tokens["root"], prompt="given up").status_code == 503  # times out while queued
    assert client.get("/healthz").json()["queue"] == 0
    gate.release.set()
    first.join(10)
    assert [prompts for prompts, *_ in gate.calls] == [["a"]]  # the abandoned request never ran


# -- the audit log: administrators' refusals and failures ----------------------------------------------


def test_an_administrators_refusals_and_server_failures_are_recorded(server, monkeypatch):
    client, store, tokens, gate = server
    body = {"user": "ada", "vault": "star.vault", "concept": "star"}
    assert client.post("/v1/admin/grants", json={**body, "concept": "moon"}, headers=admin(tokens)).status_code == 404
    assert client.post("/v1/admin/grants", json={**body, "days": -1}, headers=admin(tokens)).status_code == 422

    def broken(*args, **kwargs):
        raise RuntimeError("the database went away")

    monkeypatch.setattr(store, "grant", broken)
    response = client.post("/v1/admin/grants", json=body, headers=admin(tokens))
    assert response.status_code == 500 and "database" not in response.text
    assert [r["status"] for r in store.history("root")] == [500, 422, 404]


# -- user names -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["аda", "ADA", "Ada", "ada\u200b", "ad\u0430"])
def test_a_user_name_cannot_pass_for_another(tmp_path, name):
    store = AccessStore(str(tmp_path / "grants.sqlite"))
    store.add_user("ada")
    with pytest.raises(ConceptVaultError):
        store.add_user(name)
    assert [u["name"] for u in store.users()] == ["ada"]


# -- a Hypothesis pass over request bodies: never a 5xx, never a traceback, nothing run on refusal ---------

_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.lists(st.one_of(st.integers(-5, 2**64), st.text(max_size=3), st.booleans(), st.floats()), max_size=10),
)
_bodies = st.dictionaries(
    st.sampled_from(
        ["prompt", "negative_prompt", "vault", "seeds", "steps", "guidance", "height", "width", "concepts", "x"]
    ),
    _values,
    max_size=6,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=_bodies)
def test_any_generate_body_is_answered_without_a_server_error(server, body):
    client, store, tokens, gate = server
    gate.release.set()
    text = json.dumps(body, allow_nan=True)
    response = client.post(
        "/v1/generate",
        content=text,
        headers={"Authorization": f"Bearer {tokens['ada']}", "Content-Type": "application/json"},
    )
    assert response.status_code < 500, (body, response.text)
    assert response.status_code in (200, 403, 404, 413, 422, 429), (body, response.text)
    if response.status_code != 200:
        assert "error" in response.json()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.dictionaries(st.sampled_from(["user", "vault", "concept", "days"]), _values, max_size=4),
    grant_id=st.integers(min_value=-(2**70), max_value=2**70),
)
def test_any_admin_body_or_id_is_answered_without_a_server_error(server, body, grant_id):
    client, store, tokens, gate = server
    text = json.dumps(body, allow_nan=True)
    headers = {**admin(tokens), "Content-Type": "application/json"}
    assert client.post("/v1/admin/grants", content=text, headers=headers).status_code < 500
    assert client.delete(f"/v1/admin/grants/{grant_id}", headers=admin(tokens)).status_code < 500
