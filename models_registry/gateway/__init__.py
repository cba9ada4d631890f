"""The gateway: TowerOps speaks Ollama's and OpenAI's HTTP APIs on its own port.

A client points OLLAMA_HOST (or an OpenAI base_url) at the gateway and asks for a real model or a
virtual one (``auto``, ``auto:<task type>``). Each request is selected by the same pure policy as
POST /api/v1/select (recorded as a decision with source "gateway"), held while its model loads,
admitted by urgency (at most the endpoint's slots in flight per model, critical first), forwarded
with the endpoint's num_ctx and keep_alive, streamed back as it arrives, and measured (first
token, totals, Ollama's durations) into the decision's outcome. docs/gateway.md is the guide.

    app.py            the ASGI app: routes, auth, the Ollama and OpenAI handlers
    flow.py           select → hold → admission → forward, with failover
    relay.py          streaming back, aggregation, measuring
    admission.py      the queue by urgency (Redis, shared by processes; or in-process)
    openai_protocol   OpenAI requests and answers <-> Ollama's native API
    listing.py        virtual models, /api/tags, /api/ps, /api/show, /v1/models
    classifier.py     the prompt's task type when nothing says it
    recording.py      the database side: decisions, outcomes, learning
"""
