"""Several server processes sharing one PostgreSQL database (runs where CONCEPTVAULT_TEST_POSTGRES names one)."""

from __future__ import annotations

import os

import pytest

from conceptvault.serve.store import AccessStore

URL = os.environ.get("CONCEPTVAULT_TEST_POSTGRES")
pytestmark = pytest.mark.skipif(not URL, reason="set CONCEPTVAULT_TEST_POSTGRES=postgresql+psycopg://... to run")


def test_two_stores_on_one_postgres_database_see_each_others_users_grants_and_audit():
    first, second = AccessStore(URL), AccessStore(URL)
    name = f"user{os.getpid()}"
    token = first.add_user(name)
    assert second.authenticate(token).name == name
    fingerprint = "ab" * 32
    grant = second.grant(name, "shapes", "star", fingerprint=fingerprint)
    assert first.live_concepts(name, fingerprint) == {"star"}
    first.revoke(grant)
    assert second.live_concepts(name, fingerprint) == set()
    before = first.audit_count()
    first.audit(user=name, vault="shapes", prompt="a", status=200, outcome="served")
    second.audit(user=name, vault="shapes", prompt="b", status=403, outcome="refused")
    assert second.audit_count() == before + 2
    assert [r["prompt"] for r in first.history(name, limit=2)] == ["b", "a"]
    first.remove_user(name)
