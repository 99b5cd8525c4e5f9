"""`/v1/datasets`: curated mixtures of corpora, their curation reports, and their deletion."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from api.deps import CursorDep, OwnedDataset, SessionDep, TenantDep, readable_corpora, wake_worker
from api.errors import ApiError
from api.presenters import dataset_public
from api.schemas import DatasetPublic, DatasetsPage
from selfsup.curation_spec import DatasetCreate
from storage import crud
from storage.blobs import get_blob_store
from storage.keys import curation_prefix, curation_report_key
from storage.status import DatasetStatus
from workers.celery_app import CURATE_DATASET

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])

_CREATE_DOC = """Curate a mixture of your corpora on the `cpu` queue: poll the dataset until `status` is `ready`
(or `failed`, with `error` saying why), then train on it with `"dataset_id"` in a job spec.

`"curation": {}` runs every rule with its defaults; leave `curation` out for a plain mixture (only
decontamination runs, when `decontaminate_against` names corpora). Sources may still be processing: curation
waits for their ingest. Datasets with the same corpora contents, weights, rules and evaluation corpora share
one curation run.
"""


@router.post(
    "",
    status_code=201,
    response_model=DatasetPublic,
    summary="Create a curated dataset",
    description=_CREATE_DOC,
    responses={422: {"description": "Invalid request, or a corpus that is unknown or failed ingest"}},
)
def create_dataset(request: DatasetCreate, tenant: TenantDep, session: SessionDep) -> DatasetPublic:
    _refuse_overlaps(request)
    named = [(f"sources[{i}].corpus_id", s.corpus_id) for i, s in enumerate(request.sources)]
    named += [(f"decontaminate_against[{i}]", c) for i, c in enumerate(request.decontaminate_against)]
    corpora = readable_corpora(session, tenant, named)
    sources, evaluation = corpora[: len(request.sources)], corpora[len(request.sources) :]
    dataset = crud.create_curated_dataset(
        session=session, tenant=tenant, request=request, sources=sources, evaluation=evaluation
    )
    session.commit()
    wake_worker(CURATE_DATASET, dataset.id)
    return dataset_public(dataset)


def _refuse_overlaps(request: DatasetCreate) -> None:
    """A corpus named twice among the evaluation corpora, or as both a source and one, is a mistake."""
    sources = {s.corpus_id for s in request.sources}
    problems, seen = [], set()
    for i, corpus_id in enumerate(request.decontaminate_against):
        if corpus_id in sources:
            message = f"corpus {corpus_id} is also a source: decontaminating it against itself would drop all of it"
            problems.append({"field": f"decontaminate_against[{i}]", "message": message})
        elif corpus_id in seen:
            problems.append({"field": f"decontaminate_against[{i}]", "message": f"repeats corpus {corpus_id}"})
        seen.add(corpus_id)
    if problems:
        raise ApiError(422, "; ".join(f"{p['field']}: {p['message']}" for p in problems), details=problems)


@router.get("", response_model=DatasetsPage, summary="List curated datasets")
def list_datasets(
    tenant: TenantDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: CursorDep = None,
) -> DatasetsPage:
    rows, next_cursor = crud.list_curated_datasets(session=session, tenant=tenant, limit=limit, cursor=cursor)
    return DatasetsPage(data=[dataset_public(d) for d in rows], next_cursor=next_cursor)


@router.get("/{dataset_id}", response_model=DatasetPublic, summary="Get a curated dataset and its report's totals")
def get_dataset(dataset: OwnedDataset) -> DatasetPublic:
    return dataset_public(dataset)


@router.get(
    "/{dataset_id}/report",
    response_model=dict[str, Any],
    summary="The whole curation report",
    description="Per source and split: documents and tokens in and out per rule, duplicate clusters, the top "
    "removed lines and a few removed examples per rule.",
    responses={409: {"description": "Still processing, or failed (no report)"}},
)
def get_report(dataset: OwnedDataset) -> dict[str, Any]:
    if dataset.status == DatasetStatus.PROCESSING:
        raise ApiError(409, f"dataset {dataset.id} is still processing; its report exists once it is ready")
    if dataset.status == DatasetStatus.FAILED:
        raise ApiError(409, f"dataset {dataset.id} failed, so it has no report: {dataset.error}")
    with get_blob_store().open(curation_report_key(dataset.curation_key)) as fh:
        report: dict[str, Any] = json.load(fh)
    return report


@router.delete(
    "/{dataset_id}", status_code=204, summary="Delete a curated dataset", responses={409: {"description": "In use"}}
)
def delete_dataset(dataset: OwnedDataset, session: SessionDep) -> Response:
    in_use = crud.curated_dataset_in_use(session=session, dataset_id=dataset.id)
    if in_use:
        raise ApiError(
            409,
            f"dataset {dataset.id} is used by queued, running or paused jobs ({', '.join(in_use)}); cancel them first",
            details={"job_ids": in_use},
        )
    last_user = crud.delete_curated_dataset(session=session, dataset=dataset)
    session.commit()
    if last_user:  # the kept text is shared by every dataset with the same curation key
        get_blob_store().delete_prefix(curation_prefix(dataset.curation_key))
    return Response(status_code=204)
