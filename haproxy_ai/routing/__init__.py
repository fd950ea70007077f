"""Routing between pools: the route table, the model catalog, request inspection, the router stage."""

from .catalog import ModelCatalog, PoolModels
from .inspect import MAX_PARSE, affinity_key, body_of, model_of, prompt_prefix, release, request_model, system_prompt
from .router import Router
from .table import ModelMatcher, RouteTable

__all__ = [
    "MAX_PARSE",
    "ModelCatalog",
    "ModelMatcher",
    "PoolModels",
    "RouteTable",
    "Router",
    "affinity_key",
    "body_of",
    "model_of",
    "prompt_prefix",
    "release",
    "request_model",
    "system_prompt",
]
