"""The web page in a real headless Chromium (Debian's, never a downloaded one), against a live server."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium); .ci/run installs it"
)
FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def live(sd1_path, tmp_path_factory):
    import uvicorn

    from conceptvault.backbone import load_pipeline
    from conceptvault.concepts import Concept
    from conceptvault.methods.kpop import HideConfig, hide
    from conceptvault.serve import build_server
    from conceptvault.serve.store import AccessStore
    from conceptvault.vault import read_manifest, save_vault

    folder = tmp_path_factory.mktemp("browser")
    pipe = load_pipeline(str(sd1_path), device="cpu")
    config = HideConfig(model_updates=2, sampler_steps=2, m=3, checkpoint_every=0)
    save_vault(
        folder / "shapes", pipe, hide(pipe, [Concept("star"), Concept("heart")], config, progress=False, measure=False)
    )
    db = str(folder / "grants.sqlite")
    store = AccessStore(db)
    tokens = {"ada": store.add_user("ada"), "bob": store.add_user("bob"), "root": store.add_user("root", admin=True)}
    store.grant("ada", "shapes", "star", fingerprint=read_manifest(folder / "shapes").public_fingerprint)
    app, engine = build_server([folder / "shapes"], db, device="cpu")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", tokens, store
    server.should_exit = True
    thread.join(10)
    engine.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield launched
        launched.close()


def shots() -> Path | None:
    folder = os.environ.get("CONCEPTVAULT_SCREENSHOTS")
    return Path(folder) if folder else None


def sign_in(page, url, token):
    page.goto(url)
    page.fill("#token", token)
    page.click("#login")
    page.wait_for_selector("#generate:not(.hidden)")


def test_a_user_signs_in_and_generates_with_the_concept_they_hold(live, browser):
    url, tokens, store = live
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    sign_in(page, url, tokens["ada"])
    assert "signed in as ada" in page.text_content("#who")
    assert page.is_enabled("input[data-concept='star']") and page.is_disabled("input[data-concept='heart']")
    assert "heart (no grant)" in page.text_content("#concepts")
    page.fill("#steps", "2")
    page.check("input[data-concept='star']")
    page.click("#go")
    page.wait_for_selector("#images figure >> nth=3")
    assert page.locator("#images img").count() == 4
    assert "key: star" in page.text_content("#images")
    page.wait_for_selector("#history tr")  # no wait_for_function: the page's policy forbids evaluating strings
    assert "star" in page.text_content("#history")
    if shots():
        page.screenshot(path=str(shots() / "serve-user.png"), full_page=True)
    assert store.history("ada", limit=1)[0]["granted"] == ["star"]


def test_a_bad_token_is_refused_on_the_page(live, browser):
    url, _, _ = live
    page = browser.new_page()
    page.goto(url)
    page.fill("#token", "wrong")
    page.click("#login")
    page.wait_for_selector("#signin-status.bad")
    assert "bearer token" in page.text_content("#signin-status")


def test_an_administrator_adds_and_revokes_a_grant(live, browser):
    url, tokens, store = live
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    sign_in(page, url, tokens["root"])
    page.wait_for_selector("#admin:not(.hidden)")
    page.select_option("#g-user", "bob")
    page.select_option("#g-concept", "heart")
    page.click("#g-add")
    page.wait_for_selector("#admin-status.ok")
    assert any(g["user"] == "bob" and g["concept"] == "heart" and g["live"] for g in store.grants())
    if shots():
        page.screenshot(path=str(shots() / "serve-admin.png"), full_page=True)
    grant = next(g for g in store.grants() if g["user"] == "bob" and g["concept"] == "heart")
    page.click(f"button[data-grant='{grant['id']}']")
    page.wait_for_selector(f"#admin-status:has-text('{grant['id']} revoked')")
    assert not next(g for g in store.grants() if g["id"] == grant["id"])["live"]


def test_the_content_security_policy_blocks_nothing_of_the_page_itself(live, browser):
    url, tokens, _ = live
    page = browser.new_page()
    refused = []
    page.on(
        "console", lambda message: refused.append(message.text) if "Content Security Policy" in message.text else None
    )
    response = page.goto(url)
    assert "script-src 'sha256-" in response.headers["content-security-policy"]
    assert response.headers["x-frame-options"] == "DENY"
    sign_in(page, url, tokens["ada"])
    page.wait_for_timeout(200)
    assert refused == []
