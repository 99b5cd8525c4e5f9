"""The `selfsup` command's client verbs: corpora, jobs, checkpoints and labelled sets, over the SDK.

Installed alone (`pip install ./client`) this is the `selfsup` command; with the server installed, the
server's `selfsup` hands these verbs here. `--json` on every verb prints the raw resource for scripts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from selfsup_client._progress import JobProgress
from selfsup_client._sync import Client
from selfsup_client.errors import APIError, SelfsupError
from selfsup_client.models import Checkpoint, Corpus, Job, LabelledSet, ProbeRun

app = typer.Typer(
    name="selfsup",
    help="Talk to a selfsup server: upload corpora, submit and watch jobs, download checkpoints.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
corpora_app = typer.Typer(help="Upload, list, show and delete corpora.", no_args_is_help=True)
jobs_app = typer.Typer(help="Submit, list, show, watch and control jobs.", no_args_is_help=True)
checkpoints_app = typer.Typer(help="Show, download and probe checkpoints.", no_args_is_help=True)
app.add_typer(corpora_app, name="corpora")
app.add_typer(jobs_app, name="jobs")
labelled_sets_app = typer.Typer(help="Upload, list, show and delete labelled sets (for probes).", no_args_is_help=True)
app.add_typer(checkpoints_app, name="checkpoints")
app.add_typer(labelled_sets_app, name="labelled-sets")

# Piped output is not cut to 80 columns, so an id in a table stays on one line.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, soft_wrap=True)  # an error message stays one line in a log

JsonFlag = Annotated[bool, typer.Option("--json", help="Print the raw resource as JSON (for scripts).")]
Limit = Annotated[int, typer.Option(help="How many to show (newest first).", min=1)]


class _Settings(BaseModel):
    url: str | None = None
    api_key: str | None = None


@app.callback()
def _global(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Option(envvar="SELFSUP_URL", show_envvar=True, help="The server (default http://127.0.0.1:8000)."),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="SELFSUP_API_KEY", show_envvar=True, show_default=False, help="Your API key."),
    ] = None,
) -> None:
    ctx.obj = _Settings(url=url, api_key=api_key)


def _client(ctx: typer.Context) -> Client:
    settings: _Settings = ctx.find_object(_Settings) or _Settings()
    return Client(settings.url, settings.api_key)


def _print_json(value: BaseModel | list[BaseModel]) -> None:
    data: Any = [v.model_dump(mode="json") for v in value] if isinstance(value, list) else value.model_dump(mode="json")
    out.print_json(json.dumps(data), highlight=False)


def _print_fields(model: BaseModel, skip: tuple[str, ...] = ()) -> None:
    table = Table.grid(padding=(0, 2))
    for key, value in model.model_dump(mode="json").items():
        if key in skip or value is None:
            continue
        text = json.dumps(value) if isinstance(value, dict | list) else str(value)
        table.add_row(f"[bold]{key}[/bold]", text)
    out.print(table)


def _table(*columns: str) -> Table:
    table = Table()
    table.add_column(columns[0], no_wrap=True)  # ids are copied from here
    for column in columns[1:]:
        table.add_column(column)
    return table


def _loss(job: Job, name: str) -> str:
    value = job.metrics.get(name)
    return "" if value is None else f"{value:.4f}"


# ---------------------------------------------------------------- corpora


@corpora_app.command("upload")
def corpora_upload(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, help=".txt or .jsonl, maybe .gz")],
    name: Annotated[str | None, typer.Option(help="Defaults to the file's name.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until ingest finished.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Upload a corpus (progress bar on stderr)."""
    with _client(ctx) as client:
        corpus = client.corpora.upload(file, name=name, progress=not as_json and err.is_terminal, wait=wait)
    if as_json:
        _print_json(corpus)
    else:
        _print_fields(corpus)
    if corpus.status == "failed":
        raise typer.Exit(1)


@corpora_app.command("list")
def corpora_list(ctx: typer.Context, limit: Limit = 50, as_json: JsonFlag = False) -> None:
    """List corpora, newest first."""
    with _client(ctx) as client:
        corpora: list[Corpus] = []
        for corpus in client.corpora.list(limit=min(limit, 200)):
            corpora.append(corpus)
            if len(corpora) >= limit:
                break
    if as_json:
        _print_json(list[BaseModel](corpora))
        return
    table = _table("id", "name", "status", "format", "size", "documents", "created")
    for c in corpora:
        table.add_row(
            c.id,
            c.name,
            c.status,
            c.format,
            f"{c.size_bytes:,}",
            str(c.documents or ""),
            f"{c.created_at:%Y-%m-%d %H:%M}",
        )
    out.print(table)


@corpora_app.command("show")
def corpora_show(ctx: typer.Context, corpus_id: str, as_json: JsonFlag = False) -> None:
    """Show one corpus."""
    with _client(ctx) as client:
        corpus = client.corpora.get(corpus_id)
    _print_json(corpus) if as_json else _print_fields(corpus)


@corpora_app.command("delete")
def corpora_delete(ctx: typer.Context, corpus_id: str, as_json: JsonFlag = False) -> None:
    """Delete a corpus."""
    with _client(ctx) as client:
        client.corpora.delete(corpus_id)
    if as_json:
        out.print_json(json.dumps({"id": corpus_id, "deleted": True}))
    else:
        out.print(f"deleted {corpus_id}")


# ---------------------------------------------------------------- jobs


def _load_spec(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8")
    try:
        spec = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise typer.BadParameter(f"{path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}") from exc
    if not isinstance(spec, dict):
        raise typer.BadParameter(f"{path} must hold one job spec (a mapping), not {type(spec).__name__}")
    return spec


@jobs_app.command("create")
def jobs_create(
    ctx: typer.Context,
    spec_file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="The job spec, .json or .yaml")],
    idempotency_key: Annotated[
        str | None, typer.Option(help="Repeat the command safely: the same key returns the same job.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Submit a job from a JSON or YAML spec."""
    spec = _load_spec(spec_file)
    with _client(ctx) as client:
        job = client.jobs.create(spec, idempotency_key=idempotency_key)
    _print_json(job) if as_json else _print_fields(job, skip=("spec", "metrics"))


@jobs_app.command("estimate")
def jobs_estimate(
    ctx: typer.Context,
    spec_file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="The job spec, .json or .yaml")],
    as_json: JsonFlag = False,
) -> None:
    """Estimate a job from a JSON or YAML spec (parameters, tokens, FLOPs, ETA); creates nothing."""
    spec = _load_spec(spec_file)
    with _client(ctx) as client:
        estimate = client.jobs.estimate(spec)
    _print_json(estimate) if as_json else _print_fields(estimate, skip=("flops_formula", "eta_basis"))
    if not as_json and estimate.eta_basis is not None:
        basis = estimate.eta_basis
        out.print(f"ETA from {basis.count} job(s) ({basis.shape_match}): {', '.join(basis.job_ids)}")


@jobs_app.command("list")
def jobs_list(
    ctx: typer.Context,
    status: Annotated[str | None, typer.Option(help="queued, running, paused, succeeded, failed or cancelled")] = None,
    limit: Limit = 50,
    as_json: JsonFlag = False,
) -> None:
    """List jobs, newest first."""
    with _client(ctx) as client:
        jobs: list[Job] = []
        for job in client.jobs.list(status=status, limit=min(limit, 200)):
            jobs.append(job)
            if len(jobs) >= limit:
                break
    if as_json:
        _print_json(list[BaseModel](jobs))
        return
    table = _table("id", "name", "status", "step", "train loss", "val loss", "created")
    for j in jobs:
        table.add_row(
            j.id,
            j.name,
            j.status,
            f"{j.step}/{j.max_steps}",
            _loss(j, "train_loss"),
            _loss(j, "val_loss"),
            f"{j.created_at:%Y-%m-%d %H:%M}",
        )
    out.print(table)


@jobs_app.command("show")
def jobs_show(ctx: typer.Context, job_id: str, as_json: JsonFlag = False) -> None:
    """Show one job: status, step, latest metrics, ETA."""
    with _client(ctx) as client:
        job = client.jobs.get(job_id)
    _print_json(job) if as_json else _print_fields(job, skip=("spec",))


def _control(ctx: typer.Context, job_id: str, action: str, as_json: bool, **options: Any) -> None:
    with _client(ctx) as client:
        job: Job = getattr(client.jobs, action)(job_id, **options)
    if as_json:
        _print_json(job)
    else:
        out.print(f"{job.id}: {action} requested; status {job.status}")


@jobs_app.command("cancel")
def jobs_cancel(ctx: typer.Context, job_id: str, as_json: JsonFlag = False) -> None:
    """Cancel a job (a running one stops at its next step)."""
    _control(ctx, job_id, "cancel", as_json)


@jobs_app.command("pause")
def jobs_pause(ctx: typer.Context, job_id: str, as_json: JsonFlag = False) -> None:
    """Pause a job (it checkpoints and frees its worker)."""
    _control(ctx, job_id, "pause", as_json)


@jobs_app.command("resume")
def jobs_resume(
    ctx: typer.Context,
    job_id: str,
    devices: Annotated[
        int | None, typer.Option(min=1, help="Train on this many devices from here on (resources.devices).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Resume a paused job (on another number of devices with --devices)."""
    _control(ctx, job_id, "resume", as_json, devices=devices)


@jobs_app.command("watch")
def jobs_watch(ctx: typer.Context, job_id: str, as_json: JsonFlag = False) -> None:
    """Follow a job live: a progress bar (step, losses, tokens/s, ETA) and its events as they happen.

    Exits 0 when the job succeeds, 1 when it fails or is cancelled. With --json, prints each stream
    message as one line of JSON.
    """
    final: Job | None = None
    with _client(ctx) as client, JobProgress(enabled=not as_json) as bar:
        for message in client.jobs.stream(job_id):
            if as_json:
                raw = {"id": message.id, "event": message.event, "data": message.data.model_dump(mode="json")}
                out.print(json.dumps(raw), highlight=False, soft_wrap=True)
            elif message.event == "event":
                bar.show_event(message.data)  # type: ignore[arg-type]
            elif message.event == "metric":
                bar.show_metric(message.data)  # type: ignore[arg-type]
            elif message.job is not None:
                bar.show_job(message.job)
            if message.event == "end":
                final = message.job
    if final is None:
        raise SelfsupError(f"the stream of job {job_id} ended without the job finishing")
    if not as_json:
        line = f"{final.id} {final.status} at step {final.step}/{final.max_steps}"
        err.print(line + (f": {final.error}" if final.error else ""), highlight=False)
    if final.status != "succeeded":
        raise typer.Exit(1)


@jobs_app.command("events")
def jobs_events(ctx: typer.Context, job_id: str, as_json: JsonFlag = False) -> None:
    """A job's history."""
    with _client(ctx) as client:
        events = client.jobs.events(job_id)
    if as_json:
        _print_json(list[BaseModel](events))
        return
    for e in events:
        out.print(f"{e.time:%Y-%m-%d %H:%M:%S} {e.type}: {e.message}", highlight=False)


@jobs_app.command("checkpoints")
def jobs_checkpoints(ctx: typer.Context, job_id: str, as_json: JsonFlag = False) -> None:
    """A job's checkpoints."""
    with _client(ctx) as client:
        checkpoints = client.jobs.checkpoints(job_id)
    if as_json:
        _print_json(list[BaseModel](checkpoints))
    else:
        _checkpoint_table(checkpoints)


@jobs_app.command("probes")
def jobs_probes(ctx: typer.Context, job_id: str, as_json: JsonFlag = False) -> None:
    """A job's probe runs: held-out accuracy per checkpoint, and of the random-init model at step 0."""
    with _client(ctx) as client:
        runs = client.jobs.probes(job_id)
    if as_json:
        _print_json(list[BaseModel](runs))
    else:
        _probe_table(runs)


def _probe_table(runs: list[ProbeRun]) -> None:
    table = _table("id", "name", "step", "model", "status", "accuracy", "labelled set")
    for r in sorted(runs, key=lambda r: (r.name, r.step)):
        table.add_row(
            r.id,
            r.name,
            str(r.step),
            "random init" if r.random_init else (r.checkpoint_id or ""),
            r.status + (f": {r.error}" if r.error else ""),
            "" if r.accuracy is None else f"{r.accuracy:.3f}",
            r.labelled_set_id,
        )
    out.print(table)


# ---------------------------------------------------------------- checkpoints


def _checkpoint_table(checkpoints: list[Checkpoint]) -> None:
    table = _table("id", "job", "version", "step", "aliases", "val loss", "size")
    for c in checkpoints:
        val = c.metrics.get("val_loss")
        size = sum(f.size_bytes for f in c.files)
        table.add_row(
            c.id,
            c.job_id,
            str(c.version),
            str(c.step),
            ",".join(c.aliases),
            "" if val is None else f"{val:.4f}",
            f"{size:,}",
        )
    out.print(table)


@checkpoints_app.command("show")
def checkpoints_show(ctx: typer.Context, checkpoint_id: str, as_json: JsonFlag = False) -> None:
    """Show one checkpoint and its files."""
    with _client(ctx) as client:
        checkpoint = client.checkpoints.get(checkpoint_id)
    _print_json(checkpoint) if as_json else _print_fields(checkpoint)


@checkpoints_app.command("download")
def checkpoints_download(
    ctx: typer.Context,
    checkpoint_id: Annotated[str, typer.Argument(help="A checkpoint id, or a job id for its latest checkpoint.")],
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="The folder to create (default <job id>-v<version>).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Download a checkpoint's Hugging Face folder; resumes a broken download and checks every file's sha256."""
    with _client(ctx) as client:
        if checkpoint_id.startswith("job_"):
            found = [c for c in client.jobs.checkpoints(checkpoint_id) if "latest" in c.aliases]
            if not found:
                raise SelfsupError(f"job {checkpoint_id} has no checkpoint yet")
            checkpoint_id = found[-1].id
        checkpoint = client.checkpoints.get(checkpoint_id)
        folder = client.checkpoints.download(checkpoint.id, to=output, progress=not as_json and err.is_terminal)
    if as_json:
        out.print_json(json.dumps({**checkpoint.model_dump(mode="json"), "path": str(folder)}))
    else:
        out.print(f"{checkpoint.id} (step {checkpoint.step}) verified in {folder}", highlight=False)


@checkpoints_app.command("probe")
def checkpoints_probe(
    ctx: typer.Context,
    checkpoint_id: str,
    labelled_set: Annotated[str, typer.Option("--set", help="The labelled set (lbl_…) to fit the probe on.")],
    name: Annotated[
        str | None, typer.Option(help="Names the metric probe_accuracy/<name> (default: the labelled set's name).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Queue a linear probe of a checkpoint; follow it with `selfsup jobs probes JOB`."""
    with _client(ctx) as client:
        runs = client.checkpoints.probe(
            checkpoint_id, labelled_set, name=name or client.labelled_sets.get(labelled_set).name
        )
    if as_json:
        _print_json(list[BaseModel](runs))
    else:
        _probe_table(runs)


# ---------------------------------------------------------------- labelled sets


@labelled_sets_app.command("upload")
def labelled_sets_upload(
    ctx: typer.Context,
    file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, readable=True, help='JSONL of {"text", "label"}')
    ],
    name: Annotated[str | None, typer.Option(help="Defaults to the file's name.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Upload a labelled set (validated at once)."""
    with _client(ctx) as client:
        labelled_set = client.labelled_sets.upload(file, name=name)
    _print_json(labelled_set) if as_json else _print_fields(labelled_set)


@labelled_sets_app.command("list")
def labelled_sets_list(ctx: typer.Context, limit: Limit = 50, as_json: JsonFlag = False) -> None:
    """List labelled sets, newest first."""
    with _client(ctx) as client:
        sets: list[LabelledSet] = []
        for labelled_set in client.labelled_sets.list(limit=min(limit, 200)):
            sets.append(labelled_set)
            if len(sets) >= limit:
                break
    if as_json:
        _print_json(list[BaseModel](sets))
        return
    table = _table("id", "name", "examples", "labels", "size", "created")
    for s in sets:
        labels = ", ".join(f"{label} {count}" for label, count in s.label_counts.items())
        table.add_row(s.id, s.name, str(s.examples), labels, f"{s.size_bytes:,}", f"{s.created_at:%Y-%m-%d %H:%M}")
    out.print(table)


@labelled_sets_app.command("show")
def labelled_sets_show(ctx: typer.Context, labelled_set_id: str, as_json: JsonFlag = False) -> None:
    """Show one labelled set."""
    with _client(ctx) as client:
        labelled_set = client.labelled_sets.get(labelled_set_id)
    _print_json(labelled_set) if as_json else _print_fields(labelled_set)


@labelled_sets_app.command("delete")
def labelled_sets_delete(ctx: typer.Context, labelled_set_id: str, as_json: JsonFlag = False) -> None:
    """Delete a labelled set."""
    with _client(ctx) as client:
        client.labelled_sets.delete(labelled_set_id)
    if as_json:
        out.print_json(json.dumps({"id": labelled_set_id, "deleted": True}))
    else:
        out.print(f"deleted {labelled_set_id}")


# ---------------------------------------------------------------- entry point


def _report(exc: SelfsupError) -> None:
    err.print(f"[bold red]error:[/] {exc}", highlight=False)
    if isinstance(exc, APIError) and isinstance(exc.details, list):
        for item in exc.details:
            if isinstance(item, dict) and "field" in item:
                err.print(f"  {item['field']}: {item.get('message', '')}", highlight=False)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the client's `selfsup` command; returns the exit status.

    Usage errors are typer's (exit 2, with the usage); an error of the API or the connection prints its
    message (and a 422's fields), exit 1, never a traceback.
    """
    command = typer.main.get_command(app)
    try:
        command.main(args=argv, prog_name="selfsup", standalone_mode=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except SelfsupError as exc:
        _report(exc)
        return 1
    except OSError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
