"""An overlay's ``release/`` kustomize Component, as file texts: pure, so the same release renders the same bytes.

The component pins the base's placeholder image to the version's digest, labels and annotates every object with
the model version, sets the server's timing from ``promotion:`` (startup probe, drain), and, in production, gives
the workload the Argo Rollouts canary of ``canary:`` (steps, pauses, Gateway API traffic routing, analysis).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from mlrelease.core.errors import UserError
from mlrelease.core.params import CanaryParams, PromotionParams
from release.k8s import analysis
from release.k8s.yamltext import dump, dump_all, with_header

PLACEHOLDER_IMAGE = "mlrelease/model-server"  # the base's image name (deploy/k8s/base/model-server.yaml)
WORKLOAD = "model-server"  # the base's Deployment, production's Rollout, the HTTPRoute
CONTAINER = "server"
STABLE_SERVICE, CANARY_SERVICE = "model-server-stable", "model-server-canary"
GATEWAY_PLUGIN = "argoproj-labs/gatewayAPI"  # Argo Rollouts' Gateway API traffic router plugin
STARTUP_PERIOD_S = 2  # the base's startupProbe.periodSeconds
ROLLBACK_WINDOW = 3  # a return to one of the last revisions skips the steps (Argo Rollouts' rollbackWindow)
ENVIRONMENTS = ("staging", "production")
VERSION_LABEL = "app.kubernetes.io/version"


@dataclass(frozen=True)
class Release:
    """What one environment's overlay pins: the registered version and its image."""

    environment: str
    model_name: str
    version: str
    image: str  # repository, without tag or digest
    digest: str  # sha256:...
    artifact_sha256: str | None = None

    @property
    def image_ref(self) -> str:
        """The image as the pods pull it: by digest."""
        return f"{self.image}@{self.digest}"


def steps_of(params: CanaryParams) -> list[int]:
    """``canary.steps`` as the whole percentages Argo Rollouts' ``setWeight`` takes; anything else is refused."""
    if any(w != int(w) for w in params.steps):
        raise UserError(
            f"canary.steps {params.steps}: Argo Rollouts' setWeight takes whole percentages; round them in params.yaml"
        )
    return [int(w) for w in params.steps]


def release_annotations(release: Release) -> dict[str, str]:
    """What every rendered object (and pod) says about the release it belongs to."""
    found = {
        "mlrelease.io/model-name": release.model_name,
        "mlrelease.io/model-version": release.version,
        "mlrelease.io/image": release.image_ref,
    }
    if release.artifact_sha256:
        found["mlrelease.io/artifact-sha256"] = release.artifact_sha256
    return found


def server_patch(release: Release, promotion: PromotionParams) -> dict[str, Any]:
    """The pod template's release settings: the version the server reports, its drain, the startup budget."""
    drain = max(1, math.ceil(promotion.drain_timeout))
    container = {
        "name": CONTAINER,
        "env": [
            {"name": "MLRELEASE_MODEL_VERSION", "value": release.version},
            {"name": "MLRELEASE_GRACEFUL_TIMEOUT_S", "value": str(drain)},
        ],
        "startupProbe": {"failureThreshold": max(1, math.ceil(promotion.ready_timeout / STARTUP_PERIOD_S))},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": WORKLOAD},
        "spec": {"template": {"spec": {"terminationGracePeriodSeconds": drain + 5, "containers": [container]}}},
    }


def canary_steps(params: CanaryParams, names: dict[int, list[str]]) -> list[dict[str, Any]]:
    """Per step: its weight, one interval at that weight, then the analysis of that interval on."""
    pause = {"duration": f"{analysis.interval_seconds(params)}s"}
    steps: list[dict[str, Any]] = []
    for weight in steps_of(params):
        steps += [{"setWeight": weight}, {"pause": pause}, {"analysis": analysis.step_analysis(names[weight])}]
    return steps


def canary_strategy(params: CanaryParams, names: dict[int, list[str]]) -> dict[str, Any]:
    """The Rollout's canary: the two Services, traffic on the Gateway's HTTPRoute, the steps."""
    return {
        "canary": {
            "stableService": STABLE_SERVICE,
            "canaryService": CANARY_SERVICE,
            "abortScaleDownDelaySeconds": 30,
            "trafficRouting": {"plugins": {GATEWAY_PLUGIN: {"httpRoute": WORKLOAD}}},
            "steps": canary_steps(params, names),
        }
    }


def rollout_patch(params: CanaryParams, names: dict[int, list[str]]) -> list[dict[str, Any]]:
    """JSON patch of the base's Deployment: the canary strategy and the rollback window (the production overlay
    then makes it a Rollout)."""
    return [
        {"op": "replace", "path": "/spec/strategy", "value": canary_strategy(params, names)},
        {"op": "add", "path": "/spec/rollbackWindow", "value": {"revisions": ROLLBACK_WINDOW}},
    ]


def component(release: Release, production: bool) -> dict[str, Any]:
    """The Component's kustomization: image by digest, version label, annotations, the patch files."""
    target = {"group": "apps", "version": "v1", "kind": "Deployment", "name": WORKLOAD}
    patches: list[dict[str, Any]] = [{"path": "server-patch.yaml", "target": target}]
    found: dict[str, Any] = {
        "apiVersion": "kustomize.config.k8s.io/v1alpha1",
        "kind": "Component",
        "images": [{"name": PLACEHOLDER_IMAGE, "newName": release.image, "digest": release.digest}],
        "labels": [{"pairs": {VERSION_LABEL: release.version}, "includeSelectors": False, "includeTemplates": True}],
        "commonAnnotations": release_annotations(release),
        "patches": patches,
    }
    if production:
        patches.append({"path": "rollout-patch.yaml", "target": target})
        found["resources"] = ["analysis-templates.yaml"]
    return found


def release_files(
    release: Release, canary: CanaryParams, promotion: PromotionParams, prometheus_url: str
) -> dict[str, str]:
    """File name -> text of the overlay's ``release/`` component (production adds the Rollout's canary)."""
    if release.environment not in ENVIRONMENTS:
        raise UserError(f"unknown environment {release.environment!r}; one of {', '.join(ENVIRONMENTS)}")
    production = release.environment == "production"
    header = [
        f"Rendered by `mlrelease render k8s --env {release.environment} --version {release.version}`: do not edit.",
        "Sources: params.yaml (canary:, promotion:), the registry's image_digest tag, release/k8s/.",
    ]
    files = {
        "kustomization.yaml": with_header(header, dump(component(release, production))),
        "server-patch.yaml": with_header(header, dump(server_patch(release, promotion))),
    }
    if production:
        templates, names = analysis.analysis_templates(canary, release.environment, steps_of(canary), prometheus_url)
        files["rollout-patch.yaml"] = with_header(header, dump(rollout_patch(canary, names)))
        files["analysis-templates.yaml"] = with_header(header, dump_all(templates))
    return files
