"""The gateway's database side (plain Django, called from the event loop through a thread pool):
select and record a decision, watch a load, record what happened, learn from Ollama's durations.
"""
from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from django.db import connection

from models_registry import models as m
from models_registry.learning import signals
from models_registry.policy import SelectionRequest
from models_registry.runtime.loads import EWMA_ALPHA, learn_load_time
from models_registry.selection import advisory
from models_registry.selection.service import Ask, select_and_record
from models_registry.selection.world import load_config
from models_registry.slo import rollups
from models_registry.timeutil import utcnow

log = logging.getLogger(__name__)

# Ollama's load_duration counts from the request's arrival to a runner (its queue too); the
# gateway sends no more than the slots, so a longer one was a (re)load of the model.
RELOAD_SIGN_S = 0.5


@dataclass
class Route:
    """Where a decision sends a request, with what the gateway needs to forward it. A decision that
    reserves nothing is written while the request travels: ``write`` (then ``decision_id`` is set)."""

    decision_id: int | None
    created_at: dt.datetime
    model: str | None
    endpoint: str | None
    action: str | None
    expected_wait_s: float | None
    expected_response_s: float | None
    expected_prefill_s: float
    reason: str
    residency_id: int | None
    base_url: str = ""
    num_ctx: int = 0
    keep_alive: str = ""
    slots: int = 1
    model_id: int | None = None
    endpoint_id: int | None = None
    write: object = None  # the deferred INSERT (selection.service.SelectionResult.write)
    written: object = None  # the gateway's task running it (flow.Flow.start_write)
    conversation: str = ""  # learning.signals.conversation_digest of the request
    named: bool = False  # the caller named the model (an escalation is a bigger one named)


def select(req: SelectionRequest, client: str, ask: Ask) -> Route:
    now = utcnow()
    result = select_and_record(req, client=client, source="gateway", ask=ask, now=now, defer_write=True)
    d, rec = result.decision, result.record
    cfg = load_config()
    route = Route(rec.pk if rec else None, now, d.model, d.endpoint, d.action, d.expected_wait_s,
                  d.expected_response_s, d.expected_prefill_s, d.reason, result.residency_id,
                  model_id=cfg.model_ids.get(d.model) if d.model else None,
                  endpoint_id=cfg.endpoint_ids.get(d.endpoint) if d.endpoint else None, write=result.write)
    if d.endpoint is None:
        return route
    ep = endpoint_facts().get(d.endpoint)
    if ep is None:
        return route
    return Route(**{**route.__dict__, **ep})


def write(route: Route) -> int:
    """INSERT a deferred decision (once); its id."""
    if route.decision_id is None and route.write is not None:
        route.decision_id = route.write().pk
        route.write = None
    return route.decision_id


def endpoint_facts() -> dict[str, dict]:
    """Per endpoint name: base_url, num_ctx, keep_alive and slots (cached with the Config)."""
    cfg = load_config()
    cached = getattr(cfg, "_gateway_endpoints", None)
    if cached is None:
        cached = {name: {"base_url": url.rstrip("/"), "num_ctx": ctx, "keep_alive": ka, "slots": par}
                  for name, url, ctx, ka, par in m.Endpoint.objects.values_list(
                      "name", "base_url", "num_ctx", "keep_alive", "num_parallel")}
        object.__setattr__(cfg, "_gateway_endpoints", cached)  # lives and expires with the Config
    return cached


def residency_state(residency_id: int) -> str | None:
    return m.Residency.objects.filter(pk=residency_id).values_list("state", flat=True).first()


def adopt_advisory(decision_id: int) -> str | None:
    """A gateway request carrying an earlier select's decision id: that reservation is now counted
    live, so its advisory booking ends. Returns the decision's model, to be served as asked."""
    row = m.SelectionDecision.objects.filter(pk=decision_id, source="api").values_list(
        "residency_id", "model__tag").first()
    if row is None:
        return None
    advisory.release(decision_id, row[0])
    return row[1]


@dataclass
class Measured:
    """What the gateway saw of one forwarded request."""

    result: str  # ok | error | cancelled
    response_ms: int
    first_token_ms: int | None = None
    error: str = ""
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    load_s: float | None = None
    prompt_eval_s: float | None = None
    eval_s: float | None = None
    total_s: float | None = None
    done_reason: str = ""  # Ollama's: stop | length | ...

    def read_final(self, final: dict) -> None:
        """Ollama's final object: counts and durations (ns)."""
        def sec(key):
            v = final.get(key)
            return v / 1e9 if isinstance(v, (int, float)) else None

        self.prompt_tokens = _int(final.get("prompt_eval_count"))
        self.output_tokens = _int(final.get("eval_count"))
        self.load_s, self.prompt_eval_s = sec("load_duration"), sec("prompt_eval_duration")
        self.eval_s, self.total_s = sec("eval_duration"), sec("total_duration")
        reason = final.get("done_reason")
        self.done_reason = reason[:20] if isinstance(reason, str) else ""


def _int(v) -> int | None:
    return int(v) if isinstance(v, (int, float)) and v >= 0 else None


def record(route: Route, measured: Measured) -> None:
    """The outcome of one decision, as the gateway measured it, and what it teaches."""
    write(route)  # normally written already, while the request was forwarded
    first = measured.first_token_ms
    if first is not None:
        first = min(first, measured.response_ms)
    m.DecisionOutcome.objects.update_or_create(
        decision_id=route.decision_id,
        defaults=dict(
            reported_at=utcnow(), response_ms=max(0, measured.response_ms), first_token_ms=first,
            success=measured.result == "ok", measured_by="gateway", result=measured.result,
            error=measured.error[:2000], prompt_tokens=measured.prompt_tokens, output_tokens=measured.output_tokens,
            load_s=measured.load_s, prompt_eval_s=measured.prompt_eval_s, eval_s=measured.eval_s,
            total_s=measured.total_s, done_reason=measured.done_reason, conversation=route.conversation,
        ),
    )
    rollups.mark_hour_dirty(route.created_at)
    signals.record_gateway_answer(route.decision_id, measured.result, measured.done_reason, first,
                                  route.conversation, route.named, utcnow())
    if measured.result == "ok" and route.model_id is not None and route.endpoint_id is not None:
        learn(route.model_id, route.endpoint_id, measured)


_LEARN_SPEED_SQL = """
INSERT INTO models_registry_loadtimeestimate AS t
    (model_id, endpoint_id, seconds, samples, tokens_per_s, prefill_tokens_per_s, speed_samples, updated_at)
SELECT %(model)s, %(endpoint)s, lm.load_s, 0, %(tps)s, %(pps)s, 1, now()
FROM models_registry_llmmodel lm WHERE lm.id = %(model)s
ON CONFLICT (model_id, endpoint_id) DO UPDATE SET
    tokens_per_s = CASE WHEN %(tps)s::float8 IS NULL THEN t.tokens_per_s
                        WHEN t.tokens_per_s IS NULL THEN %(tps)s
                        ELSE %(a)s * %(tps)s + (1 - %(a)s) * t.tokens_per_s END,
    prefill_tokens_per_s = CASE WHEN %(pps)s::float8 IS NULL THEN t.prefill_tokens_per_s
                        WHEN t.prefill_tokens_per_s IS NULL THEN %(pps)s
                        ELSE %(a)s * %(pps)s + (1 - %(a)s) * t.prefill_tokens_per_s END,
    speed_samples = t.speed_samples + 1, updated_at = now()
"""


def learn(model_id: int, endpoint_id: int, measured: Measured) -> None:
    """EWMAs per model × endpoint (the same weight as learn_load_time): generation tokens/s from
    eval_count / eval_duration, prefill tokens/s from prompt_eval_count / prompt_eval_duration,
    and load seconds from load_duration when it shows Ollama (re)loaded the model."""
    tps = pps = None
    if measured.output_tokens and measured.eval_s:
        tps = measured.output_tokens / measured.eval_s
    if measured.prompt_tokens and measured.prompt_eval_s and measured.prompt_tokens >= 8:
        pps = measured.prompt_tokens / measured.prompt_eval_s  # a few tokens say little about prefill
    if tps is not None or pps is not None:
        with connection.cursor() as cur:
            cur.execute(_LEARN_SPEED_SQL, {"model": model_id, "endpoint": endpoint_id, "tps": tps, "pps": pps, "a": EWMA_ALPHA})
    if measured.load_s is not None and measured.load_s >= RELOAD_SIGN_S:
        learn_load_time(model_id, endpoint_id, measured.load_s)
