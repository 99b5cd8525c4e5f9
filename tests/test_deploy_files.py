"""docker-compose.yml keeps the promises of docs/deploy.md: an object store, and no volume shared between selfsup
containers (so each may run on another machine). `docker compose config` is not run here; the file is loaded as
YAML (anchors and merges resolved) and checked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent


def _services() -> dict[str, Any]:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services: dict[str, Any] = compose["services"]
    for service in services.values():  # every named volume a service mounts is declared
        for volume in service.get("volumes", []):
            assert volume.split(":", 1)[0] in compose["volumes"], volume
    return services


def test_every_selfsup_container_uses_the_object_store_and_its_own_volume() -> None:
    services = _services()
    selfsup = {name: s for name, s in services.items() if s.get("image") == "selfsup:latest"}
    assert set(selfsup) == {"migrate", "api", "worker-cpu", "worker-gpu"}
    mounts: dict[str, str] = {}
    for name, service in selfsup.items():
        env = service["environment"]
        assert env["SELFSUP_BLOB_URL"].startswith("s3://"), name
        assert {"AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"} <= set(env), name
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            assert source not in mounts, f"{name} and {mounts[source]} share the volume {source}"
            mounts[source] = name


def test_the_object_store_and_its_bucket_come_up_before_selfsup() -> None:
    services = _services()
    assert services["minio"]["image"].startswith("minio/minio")
    bucket = services["api"]["environment"]["SELFSUP_BLOB_URL"].removeprefix("s3://")
    assert f"store/{bucket.split('/', 1)[0]}" in services["create-bucket"]["command"][0]
    for name in ("api", "worker-cpu", "worker-gpu"):
        depends = services[name]["depends_on"]
        assert depends["create-bucket"]["condition"] == "service_completed_successfully", name
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
