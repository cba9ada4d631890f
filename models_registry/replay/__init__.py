"""Trace replay: real request traces through the real policy, in virtual time.

Pure Python (no Django): ``traces`` reads and maps traces; ``sim.simulate`` runs one through a
policy of ``policies`` (``towerops``: the production decision core, unchanged, with the
profile's preload windows; ``ollama_default``, ``always_best`` and ``clairvoyant``) on the
discrete-event simulated tower of ``tower``; ``report`` turns a run into the SLO figures of
``models_registry.slo.metrics`` (the same code as the live reports); ``whatif`` builds changed
profiles; ``plots`` draws them.
"""
from .sim import DEFAULT_POLICIES, POLICIES, SimResult, simulate
from .traces import (
           Mapping,
           Request,
           TraceRow,
           load_mapping,
           map_rows,
           read_trace,
           scale_and_sample,
           trace_origin,
)

__all__ = ["DEFAULT_POLICIES", "POLICIES", "Mapping", "Request", "SimResult", "TraceRow", "load_mapping", "map_rows",
           "read_trace", "scale_and_sample", "simulate", "trace_origin"]
