"""The `selfsup` command: run the whole service, or one of its processes, and manage keys and quotas.

The client verbs (corpora, jobs, checkpoints, labelled-sets) belong to the client package (`selfsup_client.cli`), which
also installs alone; this command hands them over, so one `selfsup` does both.
"""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from selfsup.logs import configure_logging
from selfsup.priority import limit_corpus_threads, lower_priority
from selfsup.processes import keep_freed_memory
from selfsup.scopes import DEFAULT_SCOPES, parse_duration, parse_scopes
from selfsup.settings import get_settings

if TYPE_CHECKING:
    from storage.tables import ApiKey

log = logging.getLogger("selfsup.cli")


def _migrate(args: argparse.Namespace) -> int:
    from storage import migrate

    if args.downgrade:
        migrate.downgrade(revision=args.downgrade)
    else:
        migrate.upgrade(revision=args.revision)
    print(f"database at {_safe_url()} is at revision {args.downgrade or args.revision}", file=sys.stderr)
    return 0


def _safe_url() -> str:
    from sqlalchemy.engine import make_url

    return make_url(get_settings().resolved_database_url).render_as_string(hide_password=True)


def _keys_create(args: argparse.Namespace) -> int:
    """Print a new key (only the key, on stdout: scripts capture it); what it is goes to stderr."""
    from storage import crud, migrate
    from storage.db import session_scope
    from storage.tables import utcnow

    try:
        scopes = parse_scopes([*(args.scope or []), *(args.scopes or [])]) or list(DEFAULT_SCOPES)
        lifetime = parse_duration(args.expires_in) if args.expires_in else None
    except ValueError as exc:
        print(f"selfsup keys create: {exc}", file=sys.stderr)
        return 2
    migrate.upgrade()
    with session_scope() as session:
        tenant = crud.get_or_create_tenant(session=session, name=args.tenant)
        expires_at = utcnow() + lifetime if lifetime else None
        api_key, key = crud.create_api_key(
            session=session, tenant=tenant, scopes=scopes, name=args.name, expires_at=expires_at
        )
        described = _describe_key(api_key)
    print(key)
    print(f"created {described} for tenant {args.tenant}; the key above is shown only now", file=sys.stderr)
    return 0


def _describe_key(api_key: ApiKey) -> str:
    expiry = f", expires {api_key.expires_at.isoformat(timespec='seconds')}" if api_key.expires_at else ""
    name = f" {api_key.name!r}" if api_key.name else ""
    return f"key {api_key.id}{name} (scopes {','.join(api_key.scopes)}{expiry})"


def _keys_list(args: argparse.Namespace) -> int:
    """A tenant's keys, one a line (never a key itself: only its first characters)."""
    from storage import crud, migrate
    from storage.db import session_scope
    from storage.tables import utcnow

    migrate.upgrade()
    with session_scope() as session:
        tenant = crud.get_tenant_by_name(session=session, name=args.tenant)
        if tenant is None:
            print(f"selfsup keys list: no tenant {args.tenant!r}", file=sys.stderr)
            return 1
        now = utcnow()
        rows = [
            (
                k.id,
                k.prefix + "...",
                ",".join(k.scopes),
                crud.api_key_refusal(k, now=now) or "active",
                _when(k.created_at),
                _when(k.expires_at),
                _when(k.last_used_at),
                k.name,
            )
            for k in crud.list_api_keys(session=session, tenant=tenant)
        ]
    header = ("ID", "PREFIX", "SCOPES", "STATUS", "CREATED", "EXPIRES", "LAST USED", "NAME")
    widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def _when(moment: datetime | None) -> str:
    return moment.isoformat(timespec="seconds") if moment is not None else "-"


def _keys_revoke(args: argparse.Namespace) -> int:
    """Revoke a key by its id: it gets 401 from its next request on."""
    from storage import crud, migrate
    from storage.db import session_scope

    migrate.upgrade()
    with session_scope() as session:
        api_key = crud.get_api_key(session=session, key_id=args.key_id)
        if api_key is None:
            print(
                f"selfsup keys revoke: no key {args.key_id!r} (see `selfsup keys list --tenant NAME`)", file=sys.stderr
            )
            return 1
        tenant = crud.get_tenant(session=session, tenant_id=api_key.tenant_id)
        crud.revoke_api_key(session=session, api_key=api_key)
        described = _describe_key(api_key)
    print(f"revoked {described} of tenant {tenant.name if tenant else '?'}", file=sys.stderr)
    return 0


# `--max-storage-bytes 10G`: a plain or scientific number (1e9), or a size pydantic's ByteSize reads
# (10G = 10^9, 10GiB = 2^30 × 10); `none` puts the quota back to the service default.
_UNSET = ("none", "default", "unlimited")


def _quota_value(text: str) -> int | None:
    from pydantic import ByteSize, TypeAdapter

    if text.strip().lower() in _UNSET:
        return None
    try:
        number = float(text)
    except ValueError:
        try:
            return int(TypeAdapter(ByteSize).validate_python(text))
        except ValidationError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a number or a size (e.g. 1000, 1e9, 10G, 512MiB, none)"
            ) from None
    if number < 0 or number != int(number):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of 0 or more")
    return int(number)


def _quotas_set(args: argparse.Namespace) -> int:
    from storage import crud, migrate
    from storage.db import session_scope

    values = {name: getattr(args, name) for name in crud.QUOTA_LIMITS if getattr(args, name) is not _KEEP}
    if args.allow_high_priority is not None:
        values["allow_high_priority"] = args.allow_high_priority
    migrate.upgrade()
    with session_scope() as session:
        tenant = crud.get_tenant_by_name(session=session, name=args.tenant)
        if tenant is None:
            print(f"no tenant {args.tenant!r} (create it with `selfsup keys create --tenant NAME`)", file=sys.stderr)
            return 1
        crud.set_quota(session=session, tenant=tenant, values=values)
    return _quotas_show(args)


def _quotas_show(args: argparse.Namespace) -> int:
    from storage import crud, migrate
    from storage.db import session_scope

    migrate.upgrade()
    with session_scope() as session:
        tenant = crud.get_tenant_by_name(session=session, name=args.tenant)
        if tenant is None:
            print(f"no tenant {args.tenant!r}", file=sys.stderr)
            return 1
        own = crud.get_quota(session=session, tenant_id=tenant.id)
        limits = crud.tenant_limits(session=session, tenant_id=tenant.id, settings=get_settings())
        used = crud.usage(session=session, tenant_id=tenant.id)
    print(f"tenant {tenant.name}")
    for name in crud.QUOTA_LIMITS:
        limit = getattr(limits, name)
        source = "" if own is not None and getattr(own, name) is not None else " (service default)"
        shown = "unlimited" if limit is None else str(limit)
        print(f"{name}: {shown}{source}, used {used[name]}")
    print(f"allow_high_priority: {'yes' if limits.allow_high_priority else 'no'}")
    return 0


_KEEP = object()  # a quota option not given: `quotas set` leaves that quota as it is


def _api(args: argparse.Namespace) -> int:
    import uvicorn

    from api.server import uvicorn_options

    settings = get_settings()
    if settings.api_nice:
        log.info("selfsup api: at nice %s (training on this machine goes first)", lower_priority(settings.api_nice))
    # Start-up chatter ("Uvicorn running on …") is `selfsup up`'s to say; errors and access lines stay.
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").setLevel(logging.INFO)
    uvicorn.run(
        "api.app:create_app",
        **uvicorn_options(settings, host=args.host or settings.api_host, port=args.port or settings.api_port),
    )
    return 0


def _worker(args: argparse.Namespace) -> int:
    from celery.signals import worker_ready, worker_shutdown

    from workers.celery_app import get_celery, training_queues

    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    unknown = set(queues) - {"cpu", "gpu"}
    if unknown or not queues:
        print(f"--queues takes cpu, gpu or cpu,gpu (got {args.queues!r})", file=sys.stderr)
        return 2
    settings = get_settings()
    if "gpu" in queues and settings.trainer_keep_freed_memory and keep_freed_memory():
        log.info("selfsup worker: malloc keeps freed memory for training")
    if "gpu" not in queues and settings.cpu_worker_nice:
        # Before Celery starts its pool: the pool's processes and every thread they start inherit it.
        log.info(
            "selfsup worker: cpu queue at nice %s (training on this machine goes first)",
            lower_priority(settings.cpu_worker_nice),
        )
    if settings.cpu_worker_threads:
        limit_corpus_threads(settings.cpu_worker_threads)
        cores = settings.cpu_worker_threads
        log.info("selfsup worker: corpus work on %s core%s", cores, "" if cores == 1 else "s")
    if args.ready_file:
        ready_file = Path(args.ready_file)
        ready_file.unlink(missing_ok=True)

        def _say_ready(**_: Any) -> None:
            ready_file.parent.mkdir(parents=True, exist_ok=True)
            ready_file.write_text(",".join(queues) + "\n")

        worker_ready.connect(_say_ready, weak=False)
    consumed = list(queues)
    if "gpu" in queues:
        devices = settings.resolved_worker_devices
        # It takes the wake-ups of the jobs it fits: `gpu` (one device) up to `gpu-N` for its N devices.
        consumed[queues.index("gpu") : queues.index("gpu") + 1] = training_queues(devices)

        def _join_fleet(**_: Any) -> None:
            from workers.fleet import announce
            from workers.tasks import worker_identity

            leaving = announce(worker_identity(), devices, settings)
            worker_shutdown.connect(lambda **_: leaving.set(), weak=False)

        worker_ready.connect(_join_fleet, weak=False)
    argv = [
        "--quiet",  # no banner: `selfsup up` prints a short start-up of its own
        "worker",
        "--queues",
        ",".join(consumed),
        "--hostname",
        f"{'+'.join(queues)}@%h-%i",
        "--loglevel",
        "INFO",
        "--without-gossip",
        "--without-mingle",
    ]
    # Training runs one job per worker process; ingest may use several processes.
    if "gpu" in queues or settings.worker_cpu_concurrency == 1:
        argv += ["--pool", "solo"]
    else:
        argv += ["--pool", "prefork", "--concurrency", str(settings.worker_cpu_concurrency)]
    if args.beat:
        settings.resolved_home.mkdir(parents=True, exist_ok=True)
        argv += ["--beat", "--schedule", str(settings.resolved_home / "celerybeat-schedule")]
    get_celery().worker_main(argv)
    return 0


def _up(args: argparse.Namespace) -> int:
    from selfsup.supervisor import Supervisor

    settings = get_settings()
    return Supervisor(settings, host=args.host or settings.api_host, port=args.port or settings.api_port).run()


CLIENT_VERBS = ("corpora", "jobs", "checkpoints", "labelled-sets")
_CLIENT_OPTIONS = ("--url", "--api-key")


def _client_verb(argv: list[str]) -> bool:
    """Whether the command line is one of the client's (its global options may come before the verb)."""
    i = 0
    while i < len(argv) and argv[i].split("=", 1)[0] in _CLIENT_OPTIONS:
        i += 1 if "=" in argv[i] else 2
    return i < len(argv) and argv[i] in CLIENT_VERBS


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(prog="selfsup", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="migrate, start the broker (unless SELFSUP_REDIS_URL), workers and API")
    up.add_argument("--host", default=None, help="default 127.0.0.1 (SELFSUP_API_HOST)")
    up.add_argument("--port", type=int, default=None, help="default 8000 (SELFSUP_API_PORT)")
    up.set_defaults(run=_up)

    migrate = sub.add_parser("migrate", help="apply the database migrations")
    migrate.add_argument("--revision", default="head")
    migrate.add_argument("--downgrade", metavar="REVISION", default=None, help="revert to REVISION (base = empty)")
    migrate.set_defaults(run=_migrate)

    keys = sub.add_parser("keys", help="manage API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser(
        "create",
        help="create a tenant if needed and print a new API key (only the key, on stdout)",
        description="Scopes: read (GET requests), write (every other request but key management; includes read), "
        "admin (manage "
        "the tenant's keys with /v1/keys; includes read and write; an admin key of SELFSUP_OPERATOR_TENANT also "
        "sets quotas). Default: read,write.",
    )
    create.add_argument("--tenant", required=True)
    create.add_argument("--scope", action="append", metavar="SCOPE", help="read, write or admin; repeat for several")
    create.add_argument("--scopes", action="append", metavar="LIST", help="comma-separated, e.g. read,write")
    create.add_argument("--name", default="", help="what the key is for")
    create.add_argument("--expires-in", default=None, metavar="DURATION", help="e.g. 3600s, 12h, 30d, 2w")
    create.set_defaults(run=_keys_create)
    listing = keys_sub.add_parser("list", help="list a tenant's keys (never the keys themselves)")
    listing.add_argument("--tenant", required=True)
    listing.set_defaults(run=_keys_list)
    revoke = keys_sub.add_parser("revoke", help="revoke a key by its id: it gets 401 from its next request on")
    revoke.add_argument("key_id", metavar="KEY_ID")
    revoke.set_defaults(run=_keys_revoke)

    quotas = sub.add_parser("quotas", help="set and show a tenant's quotas")
    quotas_sub = quotas.add_subparsers(dest="quotas_command", required=True)
    quotas_set = quotas_sub.add_parser(
        "set", help="set some of a tenant's quotas (the others are kept; `none` = the service default)"
    )
    quotas_set.add_argument("--tenant", required=True)
    for option, what in (
        ("--max-running-jobs", "jobs training at once (more wait queued)"),
        ("--max-queued-jobs", "jobs queued at once (more are refused)"),
        ("--max-storage-bytes", "bytes of corpora, labelled sets, models and checkpoints (10G, 512MiB)"),
        ("--max-upload-bytes", "bytes in one upload (1G)"),
        ("--max-job-tokens", "a job's max_steps × tokens_per_step (1e9)"),
    ):
        quotas_set.add_argument(option, type=_quota_value, default=_KEEP, metavar="N", help=what)
    quotas_set.add_argument(
        "--allow-high-priority",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="whether the tenant's jobs may ask for priority high",
    )
    quotas_set.set_defaults(run=_quotas_set)
    quotas_show = quotas_sub.add_parser("show", help="a tenant's quotas and what it uses")
    quotas_show.add_argument("--tenant", required=True)
    quotas_show.set_defaults(run=_quotas_show)

    api = sub.add_parser("api", help="run the HTTP API alone")
    api.add_argument("--host", default=None)
    api.add_argument("--port", type=int, default=None)
    api.set_defaults(run=_api)

    worker = sub.add_parser("worker", help="run a Celery worker alone")
    worker.add_argument("--queues", default="cpu,gpu", help="cpu (ingest, tokenization), gpu (training), or both")
    worker.add_argument("--beat", action="store_true", help="also run the periodic reconciler")
    worker.add_argument(
        "--ready-file", default=None, help="write this file once the worker consumes its queues (for supervisors)"
    )
    worker.set_defaults(run=_worker)

    # Listed for --help only: main() hands these verbs to the client's command line before parsing.
    for verb, what in zip(
        CLIENT_VERBS,
        (
            "upload, list, show corpora",
            "submit, list, watch, control jobs, read their probes",
            "download and probe checkpoints",
            "upload, list, show labelled sets for probes",
        ),
        strict=True,
    ):
        sub.add_parser(verb, help=f"client: {what} (selfsup {verb} --help)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `selfsup` console script."""
    argv = sys.argv[1:] if argv is None else argv
    if _client_verb(argv):
        from selfsup_client.cli import main as client_main

        return client_main(argv)
    try:
        log_format = get_settings().log_format
    except ValidationError:
        log_format = "text"  # the command itself reports the bad setting
    configure_logging(log_format)
    args = build_parser().parse_args(argv)
    try:
        get_settings()
    except ValidationError as exc:  # said plainly (the values are not echoed: some are secrets)
        print(f"selfsup: invalid settings: {exc}", file=sys.stderr)
        return 2
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
