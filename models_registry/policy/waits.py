"""The waits select() adds up to the first output token: a resident's queue or its load in
progress, a fresh load, and reading the prompt (prefill). The rule is select.py's docstring."""
from __future__ import annotations

from .types import ModelView, ResidentView


def resident_wait(m: ModelView, residents: list[ResidentView], now: float,
                  queue_slot_s: float) -> tuple[float, str, ResidentView, float]:
    """(wait, action, resident, its queue) for the resident of ``m`` that answers soonest (ties: the lower
    endpoint key, then the first listed). Its queue is ``busy_s`` when known (what the requests
    already routed there need before a slot is free, per parallel slot), else in_flight x
    queue_slot_s: use_loaded waits for the queue; wait_for_load for the rest of its load (its
    load time when ready_at is unknown) and then the queue, since the requests routed to a
    loading model are served first. Prefill is not included."""
    best = None
    for r in residents:
        queue = r.busy_s if r.busy_s is not None else r.in_flight * queue_slot_s
        if r.state == "loaded":
            action = "use_loaded"
            wait = queue
        else:
            action = "wait_for_load"
            ready = r.ready_at
            if ready is None:
                wait = m.load_s_on(r.endpoint)
            else:
                wait = ready - now
                if wait < 0.0:
                    wait = 0.0
            wait += queue
        if best is None or wait < best[0] or (wait == best[0] and r.endpoint < best[2].endpoint):
            best = (wait, action, r, queue)
    return best


def fastest_load_s(m: ModelView) -> float:
    """``m``'s shortest load time on any endpoint."""
    fastest = m.load_s
    for _, seconds in m.load_s_by_endpoint:
        if seconds < fastest:
            fastest = seconds
    return fastest


def prefill_s(m: ModelView, endpoint: str, prompt: int, num_ctx: int | None, factor: float) -> float:
    """Seconds to read a ``prompt``-token prompt on ``m`` at ``endpoint`` (its learned prefill speed
    there, else the catalog's; capped at the endpoint's context; ``factor`` is the split
    throughput factor on a split, else 1)."""
    rate = (m.prefill_tokens_per_s_on(endpoint) if m.speeds_by_endpoint else m.prefill_tokens_per_s) * factor
    if rate <= 0.0:
        return 0.0
    if num_ctx is not None and prompt > num_ctx:
        prompt = num_ctx
    return prompt / rate
