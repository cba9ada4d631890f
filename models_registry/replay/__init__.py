"""Trace replay: real request traces through the real policy, in virtual time.

Pure Python (no Django): ``traces`` reads and maps traces, ``sim`` is the discrete-event
simulator of a tower with the policies ``towerops`` (the production decision core,
unchanged), ``ollama_default`` and ``always_best``, and ``report`` turns a run into the
SLO figures of ``models_registry.metrics`` (the same code as the live reports).
"""
from .sim import POLICIES, SimResult, simulate
from .traces import Mapping, Request, TraceRow, load_mapping, map_rows, read_trace, scale_and_sample

__all__ = ["POLICIES", "Mapping", "Request", "SimResult", "TraceRow", "load_mapping", "map_rows",
           "read_trace", "scale_and_sample", "simulate"]
