"""`POST /v1/jobs:estimate`: a spec's size, compute and expected training time, from its numbers and history."""

from __future__ import annotations

from datetime import timedelta

from pydantic import ValidationError
from sqlalchemy.orm import Session

from api.schemas import EstimateBasis, JobEstimate
from selfsup import estimate
from selfsup.settings import get_settings
from selfsup.spec import JobSpec
from storage import crud
from storage.tables import Tenant, utcnow

# The most recent reference jobs an ETA is based on.
REFERENCE_JOBS = 5
# Candidate jobs read before the similar ones are picked out.
_CANDIDATE_JOBS = 50


def estimate_job(*, session: Session, tenant: Tenant, spec: JobSpec) -> JobEstimate:
    """Parameters, tokens, FLOPs, tokens per parameter and an ETA for a validated spec whose data was checked."""
    canonical = spec.model_dump(mode="json")
    tokenized = crud.tokenized_vocab_size(
        session=session,
        tenant=tenant,
        corpus_ids=canonical.get("corpus_ids"),
        dataset_id=canonical.get("dataset_id"),
        tokenizer=canonical["tokenizer"],
    )
    vocabulary = estimate.spec_vocabulary(spec, tokenized_size=tokenized)
    parameters = estimate.spec_parameters(spec, vocab_size=vocabulary.size)
    total_tokens = spec.training.max_steps * spec.tokens_per_step
    flops_per_token = estimate.job_flops_per_token(spec, parameters=parameters, vocab_size=vocabulary.size)
    training_flops = flops_per_token * total_tokens
    tokens_per_parameter = total_tokens / parameters
    eta_seconds, eta_reason, basis = _eta(session, tenant, spec, training_flops, flops_per_token)
    return JobEstimate(
        parameters=parameters,
        vocab_size=vocabulary.size,
        approximate=vocabulary.approximate,
        note=vocabulary.note,
        tokens_per_step=spec.tokens_per_step,
        max_steps=spec.training.max_steps,
        total_tokens=total_tokens,
        flops_per_token=flops_per_token,
        training_flops=training_flops,
        flops_formula=estimate.FLOPS_FORMULA,
        tokens_per_parameter=round(tokens_per_parameter, 4),
        compute_optimal_tokens_per_parameter=estimate.COMPUTE_OPTIMAL_TOKENS_PER_PARAMETER,
        compute_optimal_ratio=round(tokens_per_parameter / estimate.COMPUTE_OPTIMAL_TOKENS_PER_PARAMETER, 4),
        compute_optimal=estimate.compute_optimal_verdict(tokens_per_parameter),
        eta_seconds=eta_seconds,
        eta_reason=eta_reason,
        eta_basis=basis,
    )


def _eta(
    session: Session, tenant: Tenant, spec: JobSpec, training_flops: int, flops_per_token: int
) -> tuple[float | None, str | None, EstimateBasis | None]:
    """The ETA from the tenant's recent jobs, preferring those of the same family and objective."""
    days = get_settings().estimate_history_days
    recorded = crud.recent_throughput(
        session=session, tenant=tenant, since=utcnow() - timedelta(days=days), limit=_CANDIDATE_JOBS
    )
    candidates: list[tuple[bool, estimate.ReferenceRun]] = []
    for run in recorded:
        try:
            reference = JobSpec.model_validate(run.spec)
        except ValidationError:
            continue  # a spec stored by an older version that no longer validates: not a usable reference
        vocab_size = run.vocab_size or estimate.spec_vocabulary(reference, tokenized_size=None).size
        parameters = estimate.spec_parameters(reference, vocab_size=vocab_size)
        same_shape = (reference.model.family, reference.objective.type) == (spec.model.family, spec.objective.type)
        candidates.append(
            (
                same_shape,
                estimate.ReferenceRun(
                    job_id=run.job_id,
                    flops_per_token=estimate.job_flops_per_token(
                        reference, parameters=parameters, vocab_size=vocab_size
                    ),
                    tokens_per_second=run.tokens_per_second,
                ),
            )
        )
    if not candidates:
        return (
            None,
            f"no throughput history: none of your jobs recorded tokens_per_second in the last {days:g} days "
            "(run one, even a short one, and estimate again)",
            None,
        )
    similar = [run for same, run in candidates if same]
    references = (similar or [run for _, run in candidates])[:REFERENCE_JOBS]
    eta_seconds = estimate.eta_seconds(training_flops, references)
    rate = estimate.reference_flops_per_second(references)
    basis = EstimateBasis(
        job_ids=[r.job_id for r in references],
        count=len(references),
        shape_match="same family and objective" if similar else "any shape",
        history_days=days,
        tokens_per_second=round(rate / flops_per_token, 1),
        method=estimate.ETA_METHOD,
    )
    return eta_seconds, None, basis
