"""The canary analysis as Argo Rollouts AnalysisTemplates: the checks of :mod:`release.promql` (the same PromQL the
``prometheus`` metrics provider judges with) with the thresholds and limits of ``canary:`` in params.yaml.

How a check becomes a metric, and how Argo's counting maps onto the local analysis (docs/kubernetes.md):

- A value within the limit is a success; beyond it, a failure. No data (an empty result, NaN) meets neither
  condition, so Argo calls the measurement **inconclusive**, never a pass (argo-rollouts#1466). A check that only
  says "too little traffic" (``min_requests``) never fails (``failureCondition: "false"``): inconclusive.
- Each step runs one AnalysisRun, measuring every ``interval`` until each check passed once
  (``consecutiveSuccessLimit: 1``: the local step moves on after a passed measurement). ``failureLimit`` and
  ``inconclusiveLimit`` are ``canary.failure_limit`` and ``canary.inconclusive_limit``; ``count`` caps a run at
  the measurements those limits allow plus the pass. Argo counts per check and per step; the local analysis counts
  per interval over the whole canary.
- A Prometheus that does not answer is an Error in Argo; more than ``inconclusive_limit`` in a row end the run
  (an errored run aborts the Rollout, as a failed one does).
- The traffic-share check depends on the step's weight, so it lives in one small template per weight; every other
  check is the same at every step and lives in the shared template :data:`SHARED`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from mlrelease.core.params import CanaryParams
from release import promql

SHARED = "mlrelease-canary"
#: the Argo Rollouts arguments that say which pods are the canary's and which stable's (their ReplicaSets' hash)
HASH_ARGS = (("canary-hash", "Latest"), ("stable-hash", "Stable"))
HASH_LABEL = "rollouts_pod_template_hash"  # the ServiceMonitor's relabeling of the pods' rollouts-pod-template-hash
API_VERSION = "argoproj.io/v1alpha1"


def weight_template(weight: int) -> str:
    """The name of the AnalysisTemplate holding the checks that depend on the canary's weight at that step."""
    return f"{SHARED}-weight-{weight}"


def interval_seconds(params: CanaryParams) -> int:
    """The measurement interval (and the queries' window) in whole seconds, as Argo's pause and interval take it."""
    return max(1, math.ceil(params.interval))


def conditions(check: promql.Check) -> tuple[str, str]:
    """(successCondition, failureCondition) of a check; an empty or NaN result meets neither (inconclusive). A
    check of too little data never fails ("false": Argo takes a missing failureCondition as "not a success")."""
    value = "len(result) > 0 && !isNaN(result[0])"
    limit = format(Decimal(repr(float(check.limit))), "f")  # positional (0.00001): no exponent for expr to read
    beyond = ">" if check.passes == "<=" else "<"
    success = f"{value} && result[0] {check.passes} {limit}"
    return success, "false" if check.inconclusive else f"{value} && result[0] {beyond} {limit}"


def metric(check: promql.Check, params: CanaryParams, prometheus_url: str) -> dict[str, Any]:
    """One Argo Rollouts metric: the check's query, its conditions, the limits of ``canary:``."""
    success, failure = conditions(check)
    limits = params.failure_limit + params.inconclusive_limit
    return {
        "name": check.name,
        "interval": f"{interval_seconds(params)}s",
        "count": limits + 1,
        "consecutiveSuccessLimit": 1,
        "failureLimit": params.failure_limit,
        "inconclusiveLimit": params.inconclusive_limit,
        "consecutiveErrorLimit": params.inconclusive_limit,
        "successCondition": success,
        "failureCondition": failure,
        "provider": {
            "prometheus": {
                "address": prometheus_url,
                "timeout": max(1, math.ceil(params.prometheus_timeout)),
                "query": check.query,
            }
        },
    }


def selectors(environment: str) -> tuple[dict[str, str], dict[str, str]]:
    """The canary's and stable's series: the environment, and the pod-template hash Argo passes as an argument."""
    canary, stable = ({"environment": environment, HASH_LABEL: f"{{{{args.{name}}}}}"} for name, _ in HASH_ARGS)
    return canary, stable


def checks_by_weight(params: CanaryParams, environment: str, weights: list[int]) -> dict[int, list[promql.Check]]:
    """Every step's checks (release.promql), window = the interval."""
    canary, stable = selectors(environment)
    window = promql.duration(interval_seconds(params))
    return {w: promql.analysis_checks(canary, stable, window, params, w) for w in weights}


def split(by_weight: Mapping[int, list[promql.Check]]) -> tuple[list[promql.Check], dict[int, list[promql.Check]]]:
    """The checks that are the same at every step (shared), and each step's own (those that depend on its weight)."""
    first = next(iter(by_weight.values()))
    shared = [c for c in first if all(c in checks for checks in by_weight.values())]
    own = {w: [c for c in checks if c not in shared] for w, checks in by_weight.items()}
    return shared, own


def template(name: str, checks: list[promql.Check], params: CanaryParams, prometheus_url: str) -> dict[str, Any]:
    """An AnalysisTemplate of ``checks``, taking the two pod-template hashes as arguments."""
    return {
        "apiVersion": API_VERSION,
        "kind": "AnalysisTemplate",
        "metadata": {"name": name},
        "spec": {
            "args": [{"name": arg} for arg, _ in HASH_ARGS],
            "metrics": [metric(c, params, prometheus_url) for c in checks],
        },
    }


def analysis_templates(
    params: CanaryParams, environment: str, weights: list[int], prometheus_url: str
) -> tuple[list[dict[str, Any]], dict[int, list[str]]]:
    """The AnalysisTemplates of a canary at ``weights``, and the template names each step's analysis runs."""
    shared, own = split(checks_by_weight(params, environment, weights))
    templates = [template(SHARED, shared, params, prometheus_url)]
    names = {w: [SHARED] for w in weights}
    for weight, checks in own.items():
        if checks:
            templates.append(template(weight_template(weight), checks, params, prometheus_url))
            names[weight].append(weight_template(weight))
    return templates, names


def step_analysis(names: list[str]) -> dict[str, Any]:
    """A canary step's inline analysis: its templates, with the canary's and stable's pod-template hashes."""
    return {
        "templates": [{"templateName": name} for name in names],
        "args": [{"name": arg, "valueFrom": {"podTemplateHashValue": which}} for arg, which in HASH_ARGS],
    }
