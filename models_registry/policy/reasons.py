"""The texts select() writes for a person: a Decision's ``reason`` and each Candidate's
``rejected_because``. Pure formatting over select's rows (rows.py's ``Row``) and ``Terms``."""
from __future__ import annotations

# What a candidate's wait is, by its action.
WAIT_WORD = {"use_loaded": "queue", "wait_for_load": "remaining load", "load": "load",
             "fallback": "remote latency"}
REMOTE = "remote: used only as the fallback when no local model meets the floor"
DISABLED = "disabled"
NO_ENDPOINT = "no endpoint is configured"


def gb(mib: int) -> str:
    return f"{mib / 1024:.1f} GB"


def endpoints_down(keys: list[str]) -> str:
    if len(keys) == 1:
        return f"endpoint {keys[0]} is down"
    return f"endpoints {', '.join(keys)} are down"


def does_not_fit(need_mib: int, largest_free_mib: int, down: str) -> str:
    why = f"does not fit: needs {gb(need_mib)}, largest free GPU {gb(largest_free_mib)}"
    return f"{why} ({down})" if down else why


def below_floor(floor_text: str) -> str:
    """The rejected_because of a model below the floor: a %-template for its quality (formatted
    per row with one %, no call)."""
    return "quality %.2f below " + floor_text.replace("%", "%%")


def no_score(task: str) -> str:
    return f"no {task} quality score"


def waits_too_long(rows, terms) -> None:
    """rejected_because of rows that meet the floor but wait longer than the caller's patience."""
    for row in rows:
        word = WAIT_WORD[row.action] + (" and prompt" if row.prefill else "")
        row.why = f"{row.wait:.1f} s {word} exceeds {terms.patience_text}"


def not_loaded(terms) -> str:
    return f"not loaded: a {terms.urgency} request uses an acceptable loaded model"


def scored_below(rows, chosen) -> None:
    """rejected_because of every row in ``rows`` but ``chosen``: the score it lost on."""
    beat = f" below {chosen.model}'s {chosen.score:.2f}"
    for row in rows:
        if row is not chosen:
            row.why = "scored %.2f" % row.score + beat


def starts_later(rows, chosen) -> None:
    """rejected_because of the rows a critical request's soonest answer beat: when each starts."""
    beat = f" s, after {chosen.model}'s {chosen.wait:.1f} s"
    for row in rows:
        if row is not chosen:
            row.why = "first token in %.1f" % row.wait + beat


def best_below_floor(chosen, remote, terms) -> str:
    """Why a model below the floor serves: nothing meets it, and the remote is no better."""
    return (f"no model meets {terms.floor_text}: {chosen.model} ({chosen.quality:.2f}) is the best local one, "
            f"no worse than remote {remote.model} ({remote.quality:.2f}), so it stays local: a "
            f"{chosen.wait:.1f} s {WAIT_WORD[chosen.action]} on {chosen.endpoint}, responds in {chosen.response:.1f} s")


def no_local_choice(terms, any_endpoint_up: bool, any_endpoint: bool) -> str:
    """Why no local model was chosen (the head of a fallback's reason)."""
    if any_endpoint_up:
        return f"no local model meets {terms.floor_text} and fits"
    return "every endpoint is down" if any_endpoint else NO_ENDPOINT


def remote_is_sooner(terms) -> str:
    """Why a critical request falls back although local models meet its floor."""
    return f"a critical request takes the soonest answer, and the remote answers before any local model that meets {terms.floor_text}"


def decision_reason(chosen, alt, alt_loaded_only: bool, warned: bool, fallback_text: str, terms) -> str:
    """The decision in one or two sentences. ``alt``: the best better-quality row that meets
    the floor (None if none), and whether the critical restriction is what excluded it."""
    if chosen is None:
        return f"{fallback_text}, and no remote fallback is enabled"
    tag, q, wait, resp, action, ep = (chosen.model, chosen.quality, chosen.wait, chosen.response,
                                      chosen.action, chosen.endpoint)
    floor_text = terms.floor_text
    if action == "fallback":
        below = "" if chosen.meets else f", though below {floor_text} too"
        return f"{fallback_text}: falling back to remote {tag} ({q:.2f}{below}), responds in {resp:.1f} s"
    pre = chosen.prefill
    queue = wait - pre
    # With a prompt, waits include reading it: say so, and say when the first token comes.
    prompt_text = f" (the prompt takes {pre:.1f} s)" if pre else ""
    copy_text = ""
    if chosen.first_copy is not None:  # a second copy: say what waiting for the first would have cost
        first_ep, first_wait, first_action = chosen.first_copy
        copy_text = f"; its copy on {first_ep} has a {first_wait:.1f} s {WAIT_WORD[first_action]}"
    meets = f"meets {floor_text}"
    evicting = ""
    if chosen.evictions:
        evicting = ", evicting " + ", ".join(e.model for e in chosen.evictions)
    if warned:
        first = f", first token in {wait:.1f} s{prompt_text}" if pre else ""
        return (f"nothing met both {floor_text} and {terms.patience_text}: {tag} ({q:.2f}) "
                f"is the best that meets the floor, with a {queue:.1f} s {WAIT_WORD[action]} on "
                f"{ep}{evicting}{first}, responds in {resp:.1f} s (warned){copy_text}")
    first = f"first token in {wait:.1f} s{prompt_text}, " if pre else ""
    if action == "use_loaded":
        queued = f" after a {queue:.1f} s queue" if queue > 0 else ""
        text = f"{tag} is loaded on {ep} and {meets}: {first}responds in {resp:.1f} s{queued}"
    elif action == "wait_for_load":
        text = (f"{tag} is already loading on {ep} and {meets}: ready in {queue:.1f} s, "
                f"{first}responds in {resp:.1f} s")
    else:
        text = (f"{tag} ({q:.2f}) {meets}: a {queue:.1f} s load on {ep} ({', '.join(chosen.gpus)})"
                f"{evicting}, {first}responds in {resp:.1f} s{copy_text}")
    if alt is not None:  # the best better-quality model that fits and meets the floor: why it lost
        word = WAIT_WORD[alt.action]
        if alt.wait > terms.patience:
            text += (f"; {alt.model} ({alt.quality:.2f}) would need a {alt.wait:.1f} s {word}, "
                     f"beyond {terms.patience_text}")
        elif alt_loaded_only:
            text += (f"; {alt.model} ({alt.quality:.2f}) is not loaded, and a {terms.urgency} request "
                     f"does not wait for a load while an acceptable model is loaded")
        else:
            text += f"; {alt.model} ({alt.quality:.2f}) scored {alt.score:.2f} with a {alt.wait:.1f} s {word}"
    return text
