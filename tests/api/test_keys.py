"""API keys: scopes, `/v1/keys`, revocation and expiry from the next request on, last use, and keys never logged.

The tests share one admin key of a tenant of their own, made by `selfsup keys create --scope admin` (as an
operator does); the keys they try are made with it by `POST /v1/keys` (as a tenant's admin does)."""

from __future__ import annotations

import os
import secrets
import sqlite3
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from storage.crud import hash_api_key
from tests.factories import api_error, pending_corpus, small_job_spec, submit_job
from tests.service import REPO, SELFSUP, TEST_SETTINGS, Service, running_api, wait_until

pytestmark = pytest.mark.integration


@dataclass
class Admin:
    tenant: str
    key: str
    client: httpx.Client


@pytest.fixture(scope="module")
def admin(embedded_service: Service) -> Admin:
    """An admin key of a tenant of this module's own (one `selfsup keys create` for all its tests)."""
    tenant = _tenant("admin")
    key = embedded_service.create_key(tenant, "--scope", "admin", "--name", "ops")
    return Admin(tenant=tenant, key=key, client=_as(embedded_service, key))


def _tenant(what: str) -> str:
    return f"keys-{what}-{uuid.uuid4().hex[:8]}"


def _as(service: Service, key: str) -> httpx.Client:
    return httpx.Client(base_url=service.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def _new_key(admin: httpx.Client, **body: Any) -> dict[str, Any]:
    response = admin.post("/v1/keys", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    assert created["key"].startswith("ss_"), created
    return created


def _listed(admin: httpx.Client) -> dict[str, dict[str, Any]]:
    response = admin.get("/v1/keys")
    assert response.status_code == 200, response.text
    return {k["id"]: k for k in response.json()["data"]}


def _forbidden(response: httpx.Response, scope: str) -> None:
    error = api_error(response, 403)
    assert error["code"] == "forbidden", error
    assert f"`{scope}`" in error["message"] and error["details"]["required_scope"] == scope, error


def test_a_read_key_reads_but_cannot_create_or_cancel_and_a_write_key_cannot_manage_keys(
    embedded_service: Service, admin: Admin
) -> None:
    tenant = admin.tenant
    reader = _as(embedded_service, _new_key(admin.client, name="reader", scopes=["read"])["key"])
    writer_key = _new_key(admin.client, name="writer")  # the default scopes
    assert writer_key["scopes"] == ["read", "write"], writer_key
    writer = _as(embedded_service, writer_key["key"])

    # A queued job (its corpus is still processing), submitted with the write key.
    corpus_id = pending_corpus(embedded_service, tenant)
    job = submit_job(writer, small_job_spec(corpus_id))

    # The read key reads everything...
    assert reader.get("/v1/jobs").json()["data"][0]["id"] == job["id"]
    assert reader.get(f"/v1/jobs/{job['id']}").status_code == 200
    assert reader.get("/v1/corpora").status_code == 200
    # ...and creates and controls nothing: 403 naming the scope it lacks.
    _forbidden(reader.post("/v1/corpora", params={"name": "x.txt"}, content=b"to be or not to be\n"), "write")
    _forbidden(reader.post("/v1/jobs", json=small_job_spec(corpus_id)), "write")
    _forbidden(reader.post(f"/v1/jobs/{job['id']}/cancel"), "write")
    _forbidden(
        reader.post("/v1/webhooks", json={"url": "https://example.com/h", "event_types": ["job.succeeded"]}), "write"
    )
    assert reader.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"
    assert len(reader.get("/v1/jobs").json()["data"]) == 1
    _forbidden(reader.get("/v1/keys"), "admin")

    # The write key creates and controls, but does not manage keys.
    _forbidden(writer.get("/v1/keys"), "admin")
    _forbidden(writer.post("/v1/keys", json={"scopes": ["admin"]}), "admin")
    _forbidden(writer.delete(f"/v1/keys/{writer_key['id']}"), "admin")
    assert writer.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "cancelled"

    # The admin key does everything in its tenant (admin includes read and write).
    assert admin.client.get(f"/v1/jobs/{job['id']}").json()["status"] == "cancelled"
    # Unknown scopes and extra fields are refused with the field named.
    assert (
        api_error(admin.client.post("/v1/keys", json={"scopes": ["root"]}), 422)["details"][0]["field"] == "scopes[0]"
    )
    api_error(admin.client.post("/v1/keys", json={"tenant_id": "ten_other"}), 422)
    api_error(admin.client.post("/v1/keys", json={"expires_in_seconds": 5, "expires_at": "2099-01-01T00:00:00Z"}), 422)
    api_error(admin.client.post("/v1/keys", json={"expires_at": "2001-01-01T00:00:00Z"}), 422)


def test_an_admin_key_creates_lists_and_revokes_keys_and_a_revoked_key_fails_at_once(
    embedded_service: Service, admin: Admin
) -> None:
    created = _new_key(admin.client, name="ci", scopes=["read"])
    assert created["name"] == "ci" and created["scopes"] == ["read"] and not created["revoked"], created
    assert created["key"].startswith(created["prefix"]) and created["last_used_at"] is None, created
    holder = _as(embedded_service, created["key"])
    assert holder.get("/v1/jobs").status_code == 200

    # Listed without the key or anything but its first characters; the admin key itself is there too.
    response = admin.client.get("/v1/keys")
    assert created["key"] not in response.text and "hash" not in response.text, response.text
    listed = {k["id"]: k for k in response.json()["data"]}
    assert "key" not in listed[created["id"]], listed
    assert {"ci", "ops"} <= {k["name"] for k in listed.values()}, listed
    [admin_id] = [k["id"] for k in listed.values() if k["name"] == "ops"]
    assert listed[admin_id]["scopes"] == ["admin"] and admin.key not in response.text, listed

    # Revoked: the very next request is refused, and the list keeps the key as revoked.
    assert admin.client.delete(f"/v1/keys/{created['id']}").status_code == 204
    assert "revoked" in api_error(holder.get("/v1/jobs"), 401)["message"]
    assert _listed(admin.client)[created["id"]]["revoked"] is True
    assert admin.client.delete(f"/v1/keys/{created['id']}").status_code == 204  # again: nothing changes

    # Another tenant's admin sees none of these keys and cannot revoke them.
    other = _as(embedded_service, embedded_service.create_key(_tenant("other"), "--scope", "admin"))
    api_error(other.delete(f"/v1/keys/{admin_id}"), 404)
    assert set(_listed(other)).isdisjoint(listed)
    assert admin.client.get("/v1/keys").status_code == 200


def test_the_polled_job_route_checks_key_scope_and_owner_in_its_one_query(
    embedded_service: Service, admin: Admin
) -> None:
    """`GET /v1/jobs/{id}` reads the key, its tenant and the job in one query (`api.deps.read_job`): each refusal
    is still the one every other route gives, and a revocation holds from the next poll on."""
    holder_key = _new_key(admin.client, scopes=["read"])
    holder = _as(embedded_service, holder_key["key"])
    job = submit_job(admin.client, small_job_spec(pending_corpus(embedded_service, admin.tenant)))
    assert holder.get(f"/v1/jobs/{job['id']}").json()["id"] == job["id"]

    assert "no job job_nope" in api_error(holder.get("/v1/jobs/job_nope"), 404)["message"]
    other = _as(embedded_service, embedded_service.create_key(_tenant("poll-other")))
    assert f"no job {job['id']}" in api_error(other.get(f"/v1/jobs/{job['id']}"), 404)["message"]
    assert "missing API key" in api_error(httpx.get(f"{embedded_service.base_url}/v1/jobs/{job['id']}"), 401)["message"]
    assert (
        "invalid API key"
        in api_error(_as(embedded_service, "ss_" + "x" * 43).get(f"/v1/jobs/{job['id']}"), 401)["message"]
    )
    # Revoked: the very next poll is refused.
    assert admin.client.delete(f"/v1/keys/{holder_key['id']}").status_code == 204
    assert "revoked" in api_error(holder.get(f"/v1/jobs/{job['id']}"), 401)["message"]


def test_an_expiring_key_works_until_it_expires(embedded_service: Service, admin: Admin) -> None:
    created = _new_key(admin.client, scopes=["read"], expires_in_seconds=2)
    assert created["expires_at"] is not None, created
    holder = _as(embedded_service, created["key"])
    assert holder.get("/v1/jobs").status_code == 200
    wait_until(lambda: holder.get("/v1/jobs").status_code == 401, timeout=30, what="the key to expire")
    assert "expired" in api_error(holder.get("/v1/jobs"), 401)["message"]


def test_last_used_at_is_recorded(service: Service) -> None:
    # Both backends: the batched UPDATE compares timestamps, which SQLite and PostgreSQL store differently.
    admin = _as(service, service.create_key(_tenant("used"), "--scope", "admin"))
    used, unused = _new_key(admin, scopes=["read"]), _new_key(admin, scopes=["read"])
    assert _as(service, used["key"]).get("/v1/corpora").status_code == 200

    def recorded() -> dict[str, Any] | None:
        keys = _listed(admin)
        return keys if keys[used["id"]]["last_used_at"] is not None else None

    keys = wait_until(recorded, timeout=30, what="last_used_at to be written")
    assert keys[used["id"]]["last_used_at"] >= used["created_at"], keys
    assert keys[unused["id"]]["last_used_at"] is None, keys


def test_the_command_line_creates_lists_and_revokes_keys(embedded_service: Service) -> None:
    tenant = _tenant("cli")
    key = embedded_service.create_key(tenant, "--scopes", "read", "--name", "nightly", "--expires-in", "30d")
    client = _as(embedded_service, key)
    assert client.get("/v1/jobs").status_code == 200
    _forbidden(client.post("/v1/jobs", json={}), "write")

    listing = embedded_service.cli("keys", "list", "--tenant", tenant)
    assert listing.returncode == 0, listing.stderr
    assert key not in listing.stdout and key[:10] in listing.stdout, listing.stdout
    header, row = listing.stdout.splitlines()
    assert header.split()[:4] == ["ID", "PREFIX", "SCOPES", "STATUS"], header
    key_id, _, scopes, status, _, expires = row.split()[:6]
    assert (scopes, status) == ("read", "active") and expires != "-" and row.endswith("nightly"), row

    revoked = embedded_service.cli("keys", "revoke", key_id)
    assert revoked.returncode == 0 and key_id in revoked.stderr and key not in revoked.stderr + revoked.stdout
    assert "revoked" in api_error(client.get("/v1/jobs"), 401)["message"]


def test_keys_never_appear_in_the_service_log(embedded_service: Service, admin: Admin) -> None:
    admin_key = admin.key
    valid, revoked = _new_key(admin.client)["key"], _new_key(admin.client)
    admin.client.delete(f"/v1/keys/{revoked['id']}")
    invalid = "ss_" + secrets.token_urlsafe(32)
    for key, status in ((valid, 200), (revoked["key"], 401), (invalid, 401), (admin_key, 200)):
        client = _as(embedded_service, key)
        assert client.get("/v1/jobs").status_code == status
        assert client.post("/v1/jobs", json={"name": "x"}).status_code in (401, 422)
        assert client.get("/v1/jobs/job_nope").status_code in (401, 404)
    wrong_scheme = httpx.get(f"{embedded_service.base_url}/v1/jobs", headers={"Authorization": f"Token {valid}"})
    assert valid not in api_error(wrong_scheme, 401)["message"]

    log = embedded_service.log_path.read_text(errors="replace")
    for key in (valid, revoked["key"], invalid, admin_key):
        assert key not in log and key[10:] not in log, "an API key was logged"
    assert "Bearer ss_" not in log


def test_an_operator_key_from_a_setting_is_stored_on_first_start(tmp_path: Path) -> None:
    """`SELFSUP_BOOTSTRAP_ADMIN_KEY`: the API alone (no broker needed) stores it, hashed, for the operator."""
    chosen = "ss_" + secrets.token_urlsafe(32)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SELFSUP_")}
    env.update(TEST_SETTINGS)
    env.update({"SELFSUP_HOME": str(tmp_path), "SELFSUP_BOOTSTRAP_ADMIN_KEY": chosen, "SELFSUP_OPERATOR_TENANT": "ops"})
    subprocess.run([*SELFSUP, "migrate"], env=env, cwd=REPO, check=True, capture_output=True)
    log_path = tmp_path / "api.log"
    with running_api(env, log_path) as (url, _):
        operator = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {chosen}"}, timeout=30)
        [stored] = operator.get("/v1/keys").json()["data"]
        assert stored["scopes"] == ["admin"] and stored["name"].startswith("bootstrap"), stored
    assert chosen not in log_path.read_text(errors="replace")
    with sqlite3.connect(tmp_path / "selfsup.db") as db:
        assert db.execute("SELECT count(*) FROM api_keys WHERE key_hash = ?", (hash_api_key(chosen),)).fetchone() == (
            1,
        )
