"""Which task type a prompt is, when the caller did not say: a keyword heuristic, well under a
millisecond (bench/bench_gateway.py measures it), pure (standard library only).

``classify(text, tasks)`` scores the last user message (and, more lightly, the system prompt)
against a few families of cues and returns the best task type that exists in ``tasks``:

* ``code_generation`` — code fences, code-like lines (``def``, ``function``, ``;{}``), "write a
  function/script/query", a programming language named, "refactor", "unit test".
* ``troubleshooting`` — errors and outages: "error", "fails", "crash", "not working", a stack
  trace or log lines, "why does … fail", HTTP 5xx, "restart".
* ``summarization`` — "summarize", "tl;dr", "key points", "condense", or a long text with a short
  instruction around it.
* ``analysis`` — "analyse", "compare", "evaluate", "pros and cons", "trade-offs", numbers and data.
* ``chat`` — greetings, small talk, "tell me a joke", short personal messages.
* otherwise ``general`` (or the first task type that exists).

A family whose task type the profile lacks is skipped; so is a task type the heuristic does not
know (ask for it with ``auto:<task>`` or ``X-TowerOps-Task``). Its accuracy is measured on the
labelled prompts in tests/gateway/data/classifier_labelled.jsonl (tests/gateway/test_classifier.py).
"""
from __future__ import annotations

import re
from collections.abc import Sequence

_FLAGS = 0  # the word cues run on the lower-cased text (2x faster than re.IGNORECASE); line cues on the text

_CUES: dict[str, list[tuple[re.Pattern, float]]] = {
    "code_generation": [
        (re.compile(r"```"), 2.5),
        (re.compile(r"\b(write|implement|create|generate|add|make)\b[^.?!\n]{0,40}\b(function|method|class|script|"
                    r"program|module|regex|regular expression|query|endpoint|unit tests?|tests?|cli|decorator|"
                    r"component|dockerfile|makefile|bash|sql)\b", _FLAGS), 3.0),
        (re.compile(r"\b(python|javascript|typescript|java|golang|rust|c\+\+|c#|kotlin|swift|sql|bash|shell "
                    r"script|html|css|react|django|numpy|pandas)\b", _FLAGS), 1.2),
        (re.compile(r"\b(refactor|rewrite this code|code review|type hints?|compile[sd]?|lint|unit tests?|pytest|"
                    r"snippet|implementation|api client|async|recursion|algorithm)\b", _FLAGS), 1.5),
        (re.compile(r"\b(implement|write|create|build|convert|give me)\b.{0,60}\b(python|rust|go|golang|java|"
                    r"typescript|javascript|c\+\+|c#|sql|bash|kotlin|swift|pandas|react)\b", _FLAGS), 2.0),
        (re.compile(r"\b(code|coding|handler|list comprehension|binary search|data class|show the code|"
                    r"type for|interface for|linked list|hash ?map)\b", _FLAGS), 1.5),
        (re.compile(r"^\s*(def |class |function |import |from \w+ import|const |let |var |public |#include)",
                    re.MULTILINE), 2.0),
        (re.compile(r"[;{}]\s*$", re.MULTILINE), 0.6),
    ],
    "troubleshooting": [
        (re.compile(r"\b(error|errors|exception|traceback|stack trace|segfault|panic|crash(es|ed|ing)?|fail(s|ed|ing|ure)?|"
                    r"broken|not working|doesn'?t work|won'?t start|can'?t connect|refused|timed? ?out|timeout|"
                    r"outage|(is|went|goes|are|was) down|unreachable|hangs?|stuck|oom|out of memory|denied)\b", _FLAGS), 2.0),
        (re.compile(r"\b(debug|diagnose|troubleshoot|fix|root cause|why (is|does|do|did|won'?t|can'?t)|what'?s wrong|"
                    r"restart(ed|s)?|logs?|journalctl|systemctl|dmesg|kubectl|502|503|500|404)\b", _FLAGS), 1.6),
        (re.compile(r"\b(slow|slower|not detected|keeps \w+ing|disconnect\w*|does ?n[o']t run|not run|"
                    r"stopped working|degraded|high (cpu|load|latency)|evict\w*|dropped)\b", _FLAGS), 1.6),
        (re.compile(r"^\s*(\d{4}-\d\d-\d\d[ T]\d\d:\d\d|\[?(ERROR|WARN|FATAL|CRITICAL)\]?|E\d{4}|Traceback)",
                    re.MULTILINE), 2.0),
    ],
    "summarization": [
        (re.compile(r"\b(summari[sz]e|summari[sz]ing|summary|tl;?dr|key (points|takeaways)|condense|shorten|"
                    r"in (a few|one|two|three) (sentences?|bullets?|lines?|paragraphs?)|gist|recap|abstract|"
                    r"bullet points)\b", _FLAGS), 3.5),
    ],
    "analysis": [
        (re.compile(r"\b(analy[sz]e|analysis|compare|comparison|evaluate|assess|pros and cons|trade-?offs?|"
                    r"implications|correlat\w*|trend|statistic\w*|forecast|estimate|breakdown|which is better|"
                    r"reason about|interpret|insights?|weigh|strengths and weaknesses|cost-benefit)\b", _FLAGS), 2.2),
        (re.compile(r"\b(data|dataset|numbers|figures|metrics|revenue|growth|percent|%|table|csv|survey|results)\b",
                    _FLAGS), 0.8),
    ],
    "chat": [
        (re.compile(r"^\s*(hi|hello|hey|good (morning|evening|afternoon)|thanks|thank you|how are you|what'?s up|yo)\b",
                    _FLAGS), 3.0),
        (re.compile(r"\b(tell me a (joke|story)|let'?s (chat|talk)|how'?s your day|what do you think of|"
                    r"do you like|your favou?rite|i feel|i'?m (bored|sad|happy|tired)|chat with me|nice to meet)\b",
                    _FLAGS), 2.5),
    ],
}
_LONG_TEXT = 1500  # characters: a long pasted text with a short ask is usually to be summarised
_FALLBACKS = ("general", "chat")


def classify(text: str, tasks: Sequence[str], system: str = "") -> str:
    """The task type of ``text`` among ``tasks`` (the profile's task type names)."""
    available = set(tasks)
    scores: dict[str, float] = {}
    # The ask is at the start or the end of a prompt; the middle of a long paste adds cost, not cues.
    sample = text if len(text) <= 1600 else text[:1200] + "\n" + text[-400:]
    lower, system_lower = sample.lower(), system[:500].lower()
    for task, cues in _CUES.items():
        if task not in available:
            continue
        score = 0.0
        for pattern, weight in cues:
            if pattern.search(sample if pattern.flags & re.MULTILINE else lower):
                score += weight
        if system:
            for pattern, weight in cues:
                if pattern.search(system_lower):
                    score += weight * 0.3
        scores[task] = score
    if "summarization" in scores and len(text) > _LONG_TEXT and scores.get("code_generation", 0) < 3:
        scores["summarization"] += 1.5
    if "chat" in scores and len(text) < 60 and not any(scores.get(t, 0) >= 2 for t in scores if t != "chat"):
        scores["chat"] += 0.5
    best = max(scores.items(), key=lambda kv: kv[1], default=(None, 0.0))
    if best[0] is not None and best[1] >= 1.5:
        return best[0]
    for name in _FALLBACKS:
        if name in available:
            return name
    return sorted(available)[0] if available else ""


def prompt_text(body: dict) -> tuple[str, str]:
    """(the last user message or the prompt, the system prompt) of an Ollama chat/generate body."""
    messages = body.get("messages")
    if isinstance(messages, list):
        system, last = "", ""
        for msg in messages:
            if not isinstance(msg, dict):
                continue
            content = msg.get("content")
            if not isinstance(content, str):
                continue
            if msg.get("role") == "system":
                system = content
            elif msg.get("role") == "user":
                last = content
        return last, system
    prompt = body.get("prompt")
    return (prompt if isinstance(prompt, str) else ""), (body.get("system") or "")
