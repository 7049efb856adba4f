"""The rendered Kubernetes overlays pass every check that runs without a cluster.

- ``kubectl kustomize`` (kustomize v5 in kubectl) builds both overlays from the rendered release components;
- every core object validates against the Kubernetes schemas of :data:`K8S_VERSIONS` (kubernetes-validate,
  strict: an unknown field is an error), the Rollout's pod template too, as a Deployment's;
- the Rollout and AnalysisTemplates (Argo Rollouts v1.9.1), the ServiceMonitor (prometheus-operator v0.93.0) and
  the HTTPRoute (Gateway API v1.6.1, standard channel) validate against the CRD schemas vendored in
  deploy/k8s/schemas/ (README there), unknown fields refused as ``kubectl apply --validate=strict`` would;
- every AnalysisTemplate query parses (``promtool check rules``), and the references between objects resolve.

Applying to a live cluster is not tested here: no API server can run on the project's machines (docs/kubernetes.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from mlrelease.core.params import CanaryParams, PromotionParams
from release.k8s.manifests import Release
from release.k8s.render import render

pytestmark = pytest.mark.integration  # runs kubectl and promtool

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "deploy" / "k8s" / "schemas"
K8S_VERSIONS = ("1.33.0", "1.37.0")  # the oldest and newest Kubernetes minor versions the checks are run against
DIGEST = "sha256:" + "3f" * 32
HASH = "6d4b8f7c9"  # a pod-template hash, as Argo Rollouts substitutes it into {{args.*-hash}}
needs_tools = pytest.mark.skipif(
    shutil.which("kubectl") is None or shutil.which("promtool") is None, reason="kubectl and promtool (make debs)"
)


def strict(schema: Any) -> Any:
    """A CRD's structural schema that refuses unknown fields (Kubernetes prunes them; strict validation refuses)."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict(value) for key, value in schema.items()}
    open_ended = out.get("x-kubernetes-preserve-unknown-fields") or "additionalProperties" in out
    if out.get("type") == "object" and "properties" in out and not open_ended:
        out["additionalProperties"] = False
    return out


def crd_validators() -> dict[tuple[str, str], jsonschema.Draft7Validator]:
    """(apiVersion, kind) -> a validator of that version's schema, for every vendored CRD."""
    found = {}
    for path in sorted(SCHEMAS.glob("*/*.yaml")):
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            api = f"{crd['spec']['group']}/{version['name']}"
            schema = strict(version["schema"]["openAPIV3Schema"])
            found[(api, crd["spec"]["names"]["kind"])] = jsonschema.Draft7Validator(schema)
    return found


def render_tree(tmp: Path, canary: CanaryParams | None = None) -> Path:
    """deploy/k8s copied, both overlays rendered for version 7 (never the repository's own tree)."""
    tree = tmp / "k8s"
    if not tree.exists():
        shutil.copytree(REPO / "deploy" / "k8s", tree, ignore=shutil.ignore_patterns("release", "schemas"))
    for env in ("staging", "production"):
        release = Release(env, "breast-cancer-classifier", "7", "ghcr.io/team/breast-cancer-classifier", DIGEST)
        render(release, tree, canary or CanaryParams(), PromotionParams(), "http://prometheus.monitoring:9090")
    return tree


def kustomize(overlay: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize`` of one overlay, its objects parsed."""
    done = subprocess.run(["kubectl", "kustomize", str(overlay)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    tree = render_tree(tmp_path_factory.mktemp("k8s-render"))
    return {env: kustomize(tree / "overlays" / env) for env in ("staging", "production")}


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, (kind, name, [d["metadata"]["name"] for d in found])
    return found[0]


@needs_tools
def test_both_overlays_build_and_pin_the_version(built: dict[str, list[dict[str, Any]]]) -> None:
    kinds = {env: sorted(d["kind"] for d in docs) for env, docs in built.items()}
    core = ["HTTPRoute", "HorizontalPodAutoscaler", "NetworkPolicy", "PodDisruptionBudget", "Service", "Service"]
    assert kinds["staging"] == sorted(["Deployment", *core, "Service", "ServiceMonitor"])
    assert kinds["production"] == sorted(["Rollout", *core, "Service", "ServiceMonitor", *["AnalysisTemplate"] * 4])
    for env, docs in built.items():
        workload = one(docs, "Rollout" if env == "production" else "Deployment", "model-server")
        pod = workload["spec"]["template"]
        assert pod["spec"]["containers"][0]["image"] == f"ghcr.io/team/breast-cancer-classifier@{DIGEST}"
        assert pod["metadata"]["labels"]["app.kubernetes.io/version"] == "7"
        assert pod["metadata"]["labels"]["mlrelease.io/environment"] == env  # the series' environment label
        assert pod["metadata"]["annotations"]["mlrelease.io/model-version"] == "7"
        assert {d["metadata"]["namespace"] for d in docs} == {f"mlrelease-{env}"}
        # every pod takes the same optional API key: a canary never rejects what stable accepts
        env_vars = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
        ref = env_vars["MLRELEASE_API_KEY"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "mlrelease-serving", "key": "api-key", "optional": True}
        security = pod["spec"]["containers"][0]["securityContext"]
        assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
        assert pod["spec"]["securityContext"]["runAsNonRoot"] and pod["spec"]["automountServiceAccountToken"] is False
        probes = pod["spec"]["containers"][0]
        assert (probes["livenessProbe"]["httpGet"]["path"], probes["readinessProbe"]["httpGet"]["path"]) == (
            "/health",
            "/ready",
        )
        assert probes["startupProbe"]["httpGet"]["path"] == "/health"


@needs_tools
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_core_objects_validate_against_the_kubernetes_schema(
    built: dict[str, list[dict[str, Any]]], version: str
) -> None:
    crds = {kind for _, kind in crd_validators()}
    for env, docs in built.items():
        for doc in docs:
            if doc["kind"] in crds:
                continue
            kubernetes_validate.validate(doc, version, strict=True)
        rollout = [d for d in docs if d["kind"] == "Rollout"]
        for r in rollout:  # the Rollout's pod template is a Deployment's: validate it as one
            shell = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "pod-template-of-rollout"}}
            spec = {"selector": r["spec"]["selector"], "template": r["spec"]["template"]}
            kubernetes_validate.validate({**shell, "spec": spec}, version, strict=True)


@needs_tools
def test_rollouts_service_monitor_and_route_validate_against_the_vendored_crds(
    built: dict[str, list[dict[str, Any]]],
) -> None:
    validators = crd_validators()
    checked = set()
    for docs in built.values():
        for doc in docs:
            validator = validators.get((doc["apiVersion"], doc["kind"]))
            if validator is None:
                continue
            errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]
            assert not errors, (doc["kind"], doc["metadata"]["name"], errors[:5])
            checked.add(doc["kind"])
    assert checked == {"Rollout", "AnalysisTemplate", "ServiceMonitor", "HTTPRoute"}
    # the checker itself refuses what a typo would be (an unknown field), so a pass means something
    rollout = one(built["production"], "Rollout")
    typo = {**rollout, "spec": {**rollout["spec"], "strategy": {"canary": {"stepz": []}}}}
    assert list(validators[("argoproj.io/v1alpha1", "Rollout")].iter_errors(typo))


@needs_tools
def test_the_references_between_objects_resolve(built: dict[str, list[dict[str, Any]]]) -> None:
    docs = built["production"]
    canary = one(docs, "Rollout")["spec"]["strategy"]["canary"]
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {("Service", canary["stableService"]), ("Service", canary["canaryService"])} <= names
    route = canary["trafficRouting"]["plugins"]["argoproj-labs/gatewayAPI"]["httpRoute"]
    backends = [b["name"] for b in one(docs, "HTTPRoute", route)["spec"]["rules"][0]["backendRefs"]]
    assert backends == [canary["stableService"], canary["canaryService"]]
    templates = {t["templateName"] for s in canary["steps"] if "analysis" in s for t in s["analysis"]["templates"]}
    assert {("AnalysisTemplate", name) for name in templates} <= names
    target = one(docs, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Rollout", "model-server")
    monitor = one(docs, "ServiceMonitor")["spec"]
    scraped = [
        d
        for d in docs
        if d["kind"] == "Service" and d["metadata"]["labels"].items() >= monitor["selector"]["matchLabels"].items()
    ]
    assert [s["metadata"]["name"] for s in scraped] == ["model-server-metrics"]
    assert scraped[0]["spec"]["ports"][0]["name"] == monitor["endpoints"][0]["port"]
    weights = [b["weight"] for b in one(built["staging"], "HTTPRoute")["spec"]["rules"][0]["backendRefs"]]
    assert weights == [100, 0]  # at rest all traffic is stable's; only the Rollout moves the weights


@needs_tools
def test_every_analysis_query_parses_with_promtool(built: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    rules = []
    for template in (d for d in built["production"] if d["kind"] == "AnalysisTemplate"):
        for metric in template["spec"]["metrics"]:
            query = metric["provider"]["prometheus"]["query"]
            query = query.replace("{{args.canary-hash}}", HASH).replace("{{args.stable-hash}}", HASH + "0")
            assert "{{" not in query
            name = f"{template['metadata']['name']}:{metric['name']}".replace("-", "_")
            rules.append({"record": name, "expr": query})
    assert len(rules) == 8 + 3  # the shared checks, and one traffic-share check per step weight
    path = tmp_path / "analysis-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "mlrelease-analysis", "rules": rules}]}))
    done = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "SUCCESS: 11 rules found" in done.stdout, done.stdout + done.stderr


@needs_tools
def test_changed_params_change_the_built_rollout_and_analysis(tmp_path: Path) -> None:
    tree = render_tree(tmp_path, CanaryParams(steps=[10, 40], interval="1m", max_error_rate=0.002))
    docs = kustomize(tree / "overlays" / "production")
    steps = one(docs, "Rollout")["spec"]["strategy"]["canary"]["steps"]
    assert [s["setWeight"] for s in steps if "setWeight" in s] == [10, 40]
    assert {s["pause"]["duration"] for s in steps if "pause" in s} == {"60s"}
    shared = {m["name"]: m for m in one(docs, "AnalysisTemplate", "mlrelease-canary")["spec"]["metrics"]}
    assert shared["error-rate"]["successCondition"].endswith("<= 0.002")
    assert "[60s]" in shared["error-rate"]["provider"]["prometheus"]["query"]
    assert {d["metadata"]["name"] for d in docs if d["kind"] == "AnalysisTemplate"} == {
        "mlrelease-canary",
        "mlrelease-canary-weight-10",
        "mlrelease-canary-weight-40",
    }


def test_the_vendored_schemas_are_the_upstream_files_the_readme_names() -> None:
    readme = (SCHEMAS / "README.md").read_text()
    for path in sorted(SCHEMAS.glob("*/*.yaml")):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        row = next(line for line in readme.splitlines() if f"`{path.parent.name}/{path.name}`" in line)
        assert digest in row, path
    transform = (REPO / "deploy/k8s/overlays/production/rollout-transform.yaml").read_text().split("\n", 3)[3]
    assert hashlib.sha256(transform.encode()).hexdigest() in readme


def git(*args: str, cwd: Path) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30, check=True)
    return done.stdout.strip()


@pytest.fixture
def gitops(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """A deployment repository (bare, branch ``deploy`` holding staging's overlay already) and a workspace whose
    production overlay is rendered; the environment deliver.sh reads, pointing at them."""
    server = tmp_path / "server"
    (server / "team").mkdir(parents=True)
    bare = server / "team" / "models.git"
    git("init", "--quiet", "--bare", "--initial-branch", "deploy", str(bare), cwd=tmp_path)
    seed = tmp_path / "seed"
    git("clone", "--quiet", str(bare), str(seed), cwd=tmp_path)
    (seed / "k8s" / "overlays" / "staging").mkdir(parents=True)
    (seed / "k8s" / "overlays" / "staging" / "pinned.yaml").write_text("staging keeps its own release\n")
    git("add", ".", cwd=seed)
    git("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "--quiet", "-m", "seed", cwd=seed)
    git("push", "--quiet", "origin", "HEAD:refs/heads/deploy", cwd=seed)
    workspace = tmp_path / "workspace"
    render_tree(workspace / "deploy")
    shutil.rmtree(workspace / "deploy" / "k8s" / "overlays" / "staging" / "release")
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "GITOPS_TOKEN": "not-a-real-token",
        "GITOPS_REPOSITORY": "team/models",
        "GITHUB_SERVER_URL": f"file://{server}",
        "GITHUB_OUTPUT": str(tmp_path / "output"),
    }
    return bare, workspace, env


def deliver(workspace: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    script = REPO / "deploy" / "k8s" / "deliver.sh"
    return subprocess.run(["bash", str(script), "production"], cwd=workspace, env=env, capture_output=True, text=True)


def test_deliver_commits_production_and_keeps_staging(gitops: tuple[Path, Path, dict[str, str]]) -> None:
    bare, workspace, env = gitops
    done = deliver(workspace, {**env, "GITOPS_DELIVERY": "commit"})
    assert done.returncode == 0, done.stderr
    head = git("rev-parse", "deploy", cwd=bare)
    assert done.stdout.strip().splitlines()[-1] == f"commit {head} on team/models@deploy"
    files = git("ls-tree", "-r", "--name-only", "deploy", cwd=bare).splitlines()
    assert "k8s/overlays/production/release/rollout-patch.yaml" in files and "k8s/base/model-server.yaml" in files
    assert "k8s/overlays/staging/pinned.yaml" in files  # the other environment's overlay is left as it was
    assert git("log", "-1", "--format=%s", "deploy", cwd=bare) == "mlrelease: production -> version 7"
    output = Path(env["GITHUB_OUTPUT"]).read_text().splitlines()
    assert "version=7" in output and f"delivery=commit {head} on team/models@deploy" in output
    again = deliver(workspace, {**env, "GITOPS_DELIVERY": "commit"})
    assert again.stdout.strip() == "unchanged" and git("rev-parse", "deploy", cwd=bare) == head


def test_deliver_opens_a_pull_request_by_default(gitops: tuple[Path, Path, dict[str, str]], tmp_path: Path) -> None:
    """The pull request's branch is pushed, and the GitHub API (a stand-in curl here) is asked for the request."""
    bare, workspace, env = gitops
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "curl").write_text(
        '#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$CURL_ARGS"\n'
        'echo \'{"html_url": "https://github.com/team/models/pull/12"}\'\n'
    )
    (fake / "curl").chmod(0o755)
    calls = tmp_path / "curl-args"
    done = deliver(workspace, {**env, "PATH": f"{fake}:{env['PATH']}", "CURL_ARGS": str(calls)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "https://github.com/team/models/pull/12"
    branches = git("branch", "--list", "--format=%(refname:short)", cwd=bare).splitlines()
    head = next(b for b in branches if b.startswith("mlrelease/production-v7-"))
    args = calls.read_text().splitlines()
    assert "https://api.github.com/repos/team/models/pulls" in args
    body = json.loads(args[args.index("--data") + 1])
    assert (body["head"], body["base"], body["title"]) == (head, "deploy", "mlrelease: production -> version 7")
    assert "Authorization: Bearer not-a-real-token" in args
