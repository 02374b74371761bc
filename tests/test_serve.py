"""The served vault: authorisation, audit, limits, batching, no key in any answer, and the same images as
the library makes."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from conceptvault.backbone import load_pipeline
from conceptvault.concepts import Concept
from conceptvault.generate import generate_images
from conceptvault.keyfile import key_fingerprint
from conceptvault.methods.kpop import HideConfig, hide
from conceptvault.serve import Limits, build_server
from conceptvault.serve import engine as engine_module
from conceptvault.serve.engine import Engine, Job, QueueFull
from conceptvault.serve.store import AccessStore, Grant
from conceptvault.vault import Vault, read_manifest, save_vault


@pytest.fixture(scope="module")
def served(sd1_path, tmp_path_factory):
    folder = tmp_path_factory.mktemp("served")
    pipe = load_pipeline(str(sd1_path), device="cpu")
    config = HideConfig(model_updates=2, sampler_steps=2, m=3, checkpoint_every=0)
    result = hide(pipe, [Concept("star"), Concept("heart")], config, progress=False, measure=False)
    save_vault(folder / "shapes", pipe, result)
    db = str(folder / "grants.sqlite")
    store = AccessStore(db)
    tokens = {"ada": store.add_user("ada"), "bob": store.add_user("bob"), "root": store.add_user("root", admin=True)}
    app, engine = build_server([folder / "shapes"], db, device="cpu", limits=Limits(burst=1000, rate_per_minute=6000))
    client = TestClient(app)
    yield client, store, tokens, folder, result
    engine.stop()


def shapes_fingerprint(folder) -> str:
    return read_manifest(folder / "shapes").public_fingerprint


def expire(store, grant_id) -> None:
    """Make a grant run out (a grant cannot be made already expired)."""
    with store.session() as session:
        session.get(Grant, grant_id).expires = datetime.now(timezone.utc) - timedelta(days=1)
        session.commit()


def ask(client, token, **body):
    body = {"prompt": "a star", "seeds": [0], "steps": 2, **body}
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.post("/v1/generate", json=body, headers=headers)


def test_the_authorisation_matrix_and_an_audit_record_for_every_request(served):
    client, store, tokens, folder, _ = served
    ada, bob = tokens["ada"], tokens["bob"]
    fingerprint = shapes_fingerprint(folder)
    store.grant("ada", "shapes", "star", fingerprint=fingerprint)
    expire(store, store.grant("bob", "shapes", "star", fingerprint=fingerprint))
    revoked = store.grant("bob", "shapes", "heart", fingerprint=fingerprint)
    store.revoke(revoked)
    cases = [
        (dict(token=None), 401),
        (dict(token="not-a-token"), 401),
        (dict(token=ada), 200),  # the public model, no key
        (dict(token=ada, concepts=["star"]), 200),  # a live grant
        (dict(token=ada, concepts=["heart"]), 403),  # a grant for another concept
        (dict(token=ada, concepts=["star"], vault="elsewhere"), 404),  # another vault
        (dict(token=bob, concepts=["star"]), 403),  # expired
        (dict(token=bob, concepts=["heart"]), 403),  # revoked
        (dict(token=bob, prompt="star key: switch on the star"), 200),  # naming the key unlocks nothing
        (dict(token=ada, seeds=list(range(20))), 422),
        (dict(token=ada, steps=0), 422),
        (dict(token=ada, concepts=["moon"]), 404),
    ]
    for request, status in cases:
        before = store.audit_count()
        response = ask(client, request.pop("token"), **request)
        assert response.status_code == status, (request, response.text)
        assert store.audit_count() == before + 1, request
    record = store.history("bob", limit=1)[0]
    assert record["prompt"] == "star key: switch on the star" and record["granted"] == [] and record["status"] == 200
    served_with_key = next(r for r in store.history("ada") if r["granted"] == ["star"])
    assert served_with_key["outcome"] == "served" and len(served_with_key["image_hashes"]) == 1

    for raw, status in [(b"{not json", 422), (b"x" * 40_000, 413)]:
        before = store.audit_count()
        response = client.post(
            "/v1/generate", content=raw, headers={"Authorization": f"Bearer {ada}", "Content-Type": "application/json"}
        )
        assert response.status_code == status and store.audit_count() == before + 1


def test_served_images_are_the_library_images_with_and_without_the_key(served, sd1_path):
    client, store, tokens, folder, _ = served
    store.grant("ada", "shapes", "heart", fingerprint=shapes_fingerprint(folder))
    vault = Vault.load(folder / "shapes")
    pipe = load_pipeline(str(sd1_path), device="cpu")
    vault.apply(pipe)
    for concepts in ([], ["heart"]):
        response = ask(client, tokens["ada"], prompt="a heart", seeds=[3, 4], concepts=concepts, guidance=7.5)
        assert response.status_code == 200, response.text
        got = [np.asarray(Image.open(io.BytesIO(base64.b64decode(i["png"])))) for i in response.json()["images"]]
        made = generate_images(
            pipe, ["a heart"] * 2, [3, 4], keys=concepts or None, steps=2, guidance=7.5, progress=False
        )
        assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(got, made, strict=True))


def test_no_key_appears_in_any_answer(served):
    client, store, tokens, _, result = served
    secrets = [key_fingerprint(k) for k in result.keys.values()]
    secrets += [base64.b64encode(k.p_k.detach().numpy().tobytes()[:24]).decode() for k in result.keys.values()]
    answers = [
        ask(client, tokens["ada"], concepts=["star"]).text,
        client.get("/metrics").text,
        client.get("/healthz").text,
        client.get("/v1/me", headers={"Authorization": f"Bearer {tokens['ada']}"}).text,
        client.get("/v1/history", headers={"Authorization": f"Bearer {tokens['ada']}"}).text,
        client.get("/v1/admin/grants", headers={"Authorization": f"Bearer {tokens['root']}"}).text,
        client.get("/").text,
    ]
    for answer in answers:
        assert not any(secret in answer for secret in secrets)
    assert tokens["ada"] not in json.dumps(store.users()) and "conceptvault_requests_total" in answers[1]


def test_admin_endpoints_need_an_admin(served):
    client, store, tokens, _, _ = served
    headers = {"Authorization": f"Bearer {tokens['bob']}"}
    assert client.get("/v1/admin/grants", headers=headers).status_code == 403
    admin = {"Authorization": f"Bearer {tokens['root']}"}
    made = client.post("/v1/admin/grants", json={"user": "bob", "vault": "shapes", "concept": "heart"}, headers=admin)
    assert made.status_code == 200
    assert "heart" in client.get("/v1/me", headers=headers).json()["vaults"]["shapes"]["granted"]
    assert client.delete(f"/v1/admin/grants/{made.json()['id']}", headers=admin).status_code == 200
    assert "heart" not in client.get("/v1/me", headers=headers).json()["vaults"]["shapes"]["granted"]


def test_the_rate_limit_refuses_with_429(sd1_path, tmp_path, served):
    _, _, _, folder, _ = served
    db = str(tmp_path / "db.sqlite")
    token = AccessStore(db).add_user("eve")
    app, engine = build_server([folder / "shapes"], db, device="cpu", limits=Limits(burst=2, rate_per_minute=0.001))
    client = TestClient(app)
    statuses = [ask(client, token).status_code for _ in range(3)]
    engine.stop()
    assert statuses == [200, 200, 429]


def test_the_engine_batches_compatible_requests_and_refuses_when_full(monkeypatch):
    calls, release = [], threading.Event()

    def fake_generate(pipe, prompts, seeds, **options):
        calls.append((list(prompts), options["keys"]))
        release.wait(5)
        return [Image.new("RGB", (8, 8)) for _ in prompts]

    monkeypatch.setattr(engine_module, "generate_images", fake_generate)
    engine = Engine({"v": object()}, queue_size=3, max_batch=8)

    def job(prompt, keys=()):
        return Job("v", prompt, "", [0, 1], 2, 3.0, None, None, tuple(keys))

    first = engine.submit(job("a"))
    time.sleep(0.2)  # the worker has taken the first job and waits on it
    waiting = [engine.submit(job("b")), engine.submit(job("c", ["star"])), engine.submit(job("d"))]
    with pytest.raises(QueueFull):
        engine.submit(job("e"))
    release.set()
    for future in [first, *waiting]:
        future.result(timeout=5)
    engine.stop()
    assert calls[1] == (["b", "b", "d", "d"], None)  # b and d share a call; c has another key
    assert calls[2] == (["c", "c"], ["star"])
