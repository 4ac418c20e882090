"""tuneforge's feedback routes: POST /v1/rewards scores answers with a served reward model; the annotation page
asks GET /v1/annotations/next for two answers to judge, POSTs the judgement to /v1/annotations, and reads who judged
what (with Cohen's kappa) from GET /v1/annotations/summary."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from tuneforge.feedback import summary
from tuneforge.serve.errors import api_error, error_responses
from tuneforge.serve.protocol_feedback import (
    AnnotationItem,
    Judgement,
    JudgementSaved,
    RewardList,
    RewardOut,
    RewardRequest,
)

router = APIRouter()


@router.post("/v1/rewards", response_model=RewardList, responses=error_responses(400, 401, 404))
def rewards(body: RewardRequest, request: Request) -> RewardList | JSONResponse:
    """The reward of each (prompt, answer) from a reward model run (train.task=reward): higher is preferred."""
    service = request.app.state.rewards
    served = sorted(service.models) if service is not None else []
    if body.model not in served:
        message = f"The model '{body.model}' is no reward model served here; reward models: {served or 'none'}"
        return api_error(404, message, "invalid_request_error", "model", "model_not_found")
    prompts = [[{"role": "user", "content": i.prompt}] if isinstance(i.prompt, str) else i.prompt for i in body.input]
    values = service.score(body.model, prompts, [i.answer for i in body.input])
    return RewardList(model=body.model, data=[RewardOut(index=k, reward=round(v, 6)) for k, v in enumerate(values)])


def _annotation(request: Request) -> Any:
    return request.app.state.annotation


NOT_ANNOTATING = "This server has no annotation session; start it with `tuneforge serve ... --annotate PROMPTS`."


@router.get("/v1/annotations/next", response_model=AnnotationItem, responses=error_responses(400, 401, 404))
def next_item(annotator: str, request: Request) -> AnnotationItem | JSONResponse:
    """The next prompt `annotator` has not judged, with its two answers (left/right drawn for them)."""
    service = _annotation(request)
    if service is None:
        return api_error(404, NOT_ANNOTATING, "invalid_request_error")
    if not annotator.strip():
        return api_error(400, "annotator must be a name", "invalid_request_error", "annotator")
    session = service.session
    item = service.next_item(annotator)
    done, total = session.progress(annotator)
    if item is None:
        return AnnotationItem(done=done, total=total, model=session.model)
    left, right = session.shown(annotator, item)
    return AnnotationItem(
        item=item.id, prompt=item.prompt, left=left, right=right, done=done, total=total, model=session.model
    )


@router.post("/v1/annotations", response_model=JudgementSaved, responses=error_responses(400, 401, 404))
def judge(body: Judgement, request: Request) -> JudgementSaved | JSONResponse:
    """Save a judgement (left, right, tie, both_bad, skip) of an item shown to the annotator."""
    service = _annotation(request)
    if service is None:
        return api_error(404, NOT_ANNOTATING, "invalid_request_error")
    item = service.items.get(body.item)
    if item is None or not item.answers:
        return api_error(404, f"no item {body.item!r} was shown in this session", "invalid_request_error", "item")
    service.session.record(body.annotator, item, body.judgement)
    done, total = service.session.progress(body.annotator)
    return JudgementSaved(saved=True, done=done, total=total)


@router.get("/v1/annotations/summary", response_model=None, responses=error_responses(401, 404))
def annotation_summary(request: Request) -> dict[str, Any] | JSONResponse:
    """Judgements per annotator and, for each pair of annotators, their agreement and Cohen's kappa."""
    service = _annotation(request)
    if service is None:
        return api_error(404, NOT_ANNOTATING, "invalid_request_error")
    return summary(service.session.judgements)
