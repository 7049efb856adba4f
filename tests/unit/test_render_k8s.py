"""``mlrelease render k8s`` without a cluster or a process: the overlay's release component is a pure function of
params.yaml and the registered version (steps and thresholds change it, the same version renders the same bytes,
the image is pinned by digest), and the Kubernetes rollback keeps the registry and audit trail's one story.
tests/integration/test_k8s_render.py runs kubectl kustomize, the schemas and promtool on the same files."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from mlrelease.commands import fast_rollback
from mlrelease.commands import render as render_cmd
from mlrelease.core.errors import UserError
from mlrelease.core.params import CanaryParams, PromotionParams
from release import promql
from release.audit import AuditLog, AuditRecord
from release.k8s import analysis, manifests
from release.k8s.bookkeeping import Books
from release.k8s.render import release_of, render, repository_of, resolve_version
from release.k8s.rollback import Where, rollback
from tests.fakes import FakeRegistry

REPO = Path(__file__).resolve().parents[2]
DIGEST = "sha256:" + "ab" * 32
PROM = "http://prometheus.test:9090"
RELEASE = manifests.Release("production", "breast-cancer-classifier", "7", "ghcr.io/team/bcc", DIGEST, "c" * 64)


def files(canary: CanaryParams | None = None, release: manifests.Release = RELEASE) -> dict[str, Any]:
    """The component's files, parsed."""
    texts = manifests.release_files(release, canary or CanaryParams(), PromotionParams(), PROM)
    return {name: list(yaml.safe_load_all(text)) for name, text in texts.items()}


def strategy(parsed: dict[str, Any]) -> dict[str, Any]:
    ops = {op["path"]: op["value"] for op in parsed["rollout-patch.yaml"][0]}
    return ops["/spec/strategy"]["canary"]


def templates(parsed: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """AnalysisTemplate name -> {metric name -> metric}."""
    docs = parsed["analysis-templates.yaml"]
    return {d["metadata"]["name"]: {m["name"]: m for m in d["spec"]["metrics"]} for d in docs}


def test_steps_and_interval_come_from_params() -> None:
    steps = strategy(files(CanaryParams(steps=[10, 30], interval="45s")))["steps"]
    assert [s.get("setWeight") for s in steps if "setWeight" in s] == [10, 30]
    assert [s["pause"]["duration"] for s in steps if "pause" in s] == ["45s", "45s"]
    runs = [s["analysis"] for s in steps if "analysis" in s]
    assert [[t["templateName"] for t in r["templates"]] for r in runs] == [
        ["mlrelease-canary", "mlrelease-canary-weight-10"],
        ["mlrelease-canary", "mlrelease-canary-weight-30"],
    ]
    assert {a["valueFrom"]["podTemplateHashValue"] for a in runs[0]["args"]} == {"Latest", "Stable"}
    assert set(templates(files(CanaryParams(steps=[10, 30])))) == {
        "mlrelease-canary",
        "mlrelease-canary-weight-10",
        "mlrelease-canary-weight-30",
    }
    for metric in templates(files(CanaryParams(interval="45s")))["mlrelease-canary"].values():
        assert metric["interval"] == "45s" and "[45s]" in metric["provider"]["prometheus"]["query"]


def test_a_changed_threshold_changes_the_analysis_and_nothing_else() -> None:
    base, stricter = files(), files(CanaryParams(max_error_rate=0.002, max_p99_latency_ms=250))
    before, after = templates(base)["mlrelease-canary"], templates(stricter)["mlrelease-canary"]
    assert before["error-rate"]["successCondition"].endswith("<= 0.01")
    assert after["error-rate"]["successCondition"].endswith("<= 0.002")
    assert after["error-rate"]["failureCondition"].endswith("> 0.002")
    assert after["p99-latency"]["successCondition"].endswith("<= 0.25")
    assert before["error-rate-increase"] == after["error-rate-increase"]
    assert base["rollout-patch.yaml"] == stricter["rollout-patch.yaml"]
    tiny = templates(files(CanaryParams(max_error_rate=1e-5)))["mlrelease-canary"]["error-rate"]
    assert tiny["successCondition"].endswith("<= 0.00001")  # positional, never 1e-05, in an Argo condition


def test_the_limits_are_the_local_analysis_limits() -> None:
    metrics = templates(files(CanaryParams(failure_limit=2, inconclusive_limit=3)))["mlrelease-canary"]
    for m in metrics.values():
        assert (m["failureLimit"], m["inconclusiveLimit"], m["consecutiveErrorLimit"]) == (2, 3, 3)
        assert m["consecutiveSuccessLimit"] == 1 and m["count"] == 2 + 3 + 1  # Argo: count >= failureLimit + 1
    assert metrics["canary-requests"]["failureCondition"] == "false"  # too few requests is never a failure


def test_the_queries_are_release_promql_s_own() -> None:
    """No copy of the PromQL here: every metric's query is release.promql's check for the Argo selectors."""
    canary, stable = analysis.selectors("production")
    assert canary == {"environment": "production", "rollouts_pod_template_hash": "{{args.canary-hash}}"}
    expected = {c.name: c.query for c in promql.analysis_checks(canary, stable, "30s", CanaryParams(), 25)}
    found = templates(files())
    queries = {**found["mlrelease-canary"], **found["mlrelease-canary-weight-25"]}
    assert {name: m["provider"]["prometheus"]["query"] for name, m in queries.items()} == expected
    assert set(found["mlrelease-canary-weight-5"]) == {"traffic-share"}


def evaluate(condition: str, result: list[float]) -> bool:
    """An Argo condition of this renderer (expr-lang: &&, !, len, isNaN) evaluated the way Argo does."""
    python = condition.replace("&&", " and ").replace("!isNaN(", " not isNaN(")
    return bool(eval(python, {"__builtins__": {}}, {"result": result, "len": len, "isNaN": math.isnan, "false": False}))


def verdict(metric: dict[str, Any], result: list[float]) -> str:
    """Argo's EvaluateResult: failure wins, neither is inconclusive."""
    if evaluate(metric["failureCondition"], result):
        return "Failed"
    return "Successful" if evaluate(metric["successCondition"], result) else "Inconclusive"


@pytest.mark.parametrize(
    ("name", "result", "expected"),
    [
        ("error-rate", [0.001], "Successful"),
        ("error-rate", [0.5], "Failed"),
        ("error-rate", [], "Inconclusive"),  # no series: no data is never a pass
        ("error-rate", [math.nan], "Inconclusive"),  # 0 / 0: no requests behind the ratio
        ("p99-latency", [math.inf], "Failed"),
        ("canary-requests", [3.0], "Inconclusive"),
        ("canary-requests", [40.0], "Successful"),
    ],
)
def test_no_data_is_inconclusive_never_a_pass(name: str, result: list[float], expected: str) -> None:
    assert verdict(templates(files())["mlrelease-canary"][name], result) == expected


def test_the_image_is_pinned_by_digest_with_version_labels() -> None:
    component = files()["kustomization.yaml"][0]
    assert component["kind"] == "Component"
    assert component["images"] == [{"name": "mlrelease/model-server", "newName": "ghcr.io/team/bcc", "digest": DIGEST}]
    assert component["labels"][0]["pairs"] == {"app.kubernetes.io/version": "7"}
    assert component["labels"][0]["includeSelectors"] is False  # selectors are immutable
    assert component["commonAnnotations"]["mlrelease.io/image"] == f"ghcr.io/team/bcc@{DIGEST}"
    server = files()["server-patch.yaml"][0]["spec"]["template"]["spec"]
    env = {e["name"]: e["value"] for e in server["containers"][0]["env"]}
    assert env["MLRELEASE_MODEL_VERSION"] == "7"
    assert server["containers"][0]["startupProbe"]["failureThreshold"] == 45  # 90 s ready_timeout / 2 s period


def test_staging_is_a_plain_deployment() -> None:
    staging = files(release=manifests.Release("staging", "m", "3", "ghcr.io/team/bcc", DIGEST))
    assert set(staging) == {"kustomization.yaml", "server-patch.yaml"}
    assert "resources" not in staging["kustomization.yaml"][0]


def test_fractional_steps_are_refused_for_set_weight() -> None:
    with pytest.raises(UserError, match="whole percentages"):
        files(CanaryParams(steps=[2.5, 25]))


def k8s_tree(tmp_path: Path) -> Path:
    """A copy of the repository's kustomize tree without any rendered component."""
    dest = tmp_path / "k8s"
    shutil.copytree(REPO / "deploy" / "k8s", dest, ignore=shutil.ignore_patterns("release", "schemas"))
    return dest


def test_the_same_version_renders_byte_identical_files(tmp_path: Path) -> None:
    tree = k8s_tree(tmp_path)
    first = render(RELEASE, tree, CanaryParams(), PromotionParams(), PROM)
    written = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(first.folder.iterdir())}
    assert len(first.changed) == 4 and set(written) == {p.name for p in first.changed}
    again = render(RELEASE, tree, CanaryParams(), PromotionParams(), PROM)
    assert again.changed == []
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(again.folder.iterdir())} == written
    assert b"Rendered by `mlrelease render k8s --env production --version 7`" in written["kustomization.yaml"][0]
    moved = render(RELEASE, tree, CanaryParams(steps=[5, 50]), PromotionParams(), PROM)
    assert [p.name for p in moved.changed] == ["analysis-templates.yaml", "rollout-patch.yaml"]


def registry(tags: dict[str, str] | None = None) -> FakeRegistry:
    fake = FakeRegistry(Path("unused"), versions=("5", "6", "7"), model_name="breast-cancer-classifier")
    for version in fake.versions:
        fake.versions[version].update(
            tags if tags is not None else {"image_digest": DIGEST, "image_ref": f"localhost/bcc:{version}-abc1234"}
        )
    return fake


def test_the_digest_comes_from_the_registry_or_the_command_names_mlrelease_build() -> None:
    found = release_of(registry(), "6", "production")
    assert (found.image, found.digest, found.version) == ("localhost/bcc", DIGEST, "6")
    assert release_of(registry(), "6", "production", "ghcr.io/team/bcc").image == "ghcr.io/team/bcc"
    with pytest.raises(UserError, match=r"`mlrelease build --version 6`"):
        release_of(registry({"image_ref": "localhost/bcc:6"}), "6", "production")
    assert repository_of("registry:5000/team/bcc:7-abc", None, "7") == "registry:5000/team/bcc"
    assert repository_of("registry:5000/team/bcc", None, "7") == "registry:5000/team/bcc"
    fake = registry()
    fake.aliases["production"] = "6"
    assert resolve_version(fake, None, "production") == "6" and resolve_version(fake, "5", "staging") == "5"
    with pytest.raises(UserError, match="alias `staging`"):
        resolve_version(fake, None, "staging")
    with pytest.raises(UserError, match="registered versions: 5, 6, 7"):
        resolve_version(fake, "9", "production")


def books(tmp_path: Path, fake: FakeRegistry) -> Books:
    return Books(registry=fake, state_dir=tmp_path / "state", by="on-call")


def where(tmp_path: Path) -> Where:
    return Where(k8s_tree(tmp_path), CanaryParams(), PromotionParams(), "ghcr.io/team/bcc", PROM)


def promoted(b: Books, *versions: str) -> None:
    """Production's history in the audit log, as promotions (local or Kubernetes) leave it."""
    before = None
    for version in versions:
        b.audit.append(
            AuditRecord("promote", "production", "ci", to_version=version, from_version=before, alias="production")
        )
        before = version
    b.registry.aliases["production"] = versions[-1]


def test_the_kubernetes_rollback_renders_the_previous_version_and_records_it(tmp_path: Path) -> None:
    fake = registry()
    b, w = books(tmp_path, fake), where(tmp_path)
    promoted(b, "5", "6", "7")
    out = rollback(b, w, None, "p99 alarm")
    said = "\n".join(out.lines)
    assert "kubectl argo rollouts abort model-server -n mlrelease-production" in said
    assert "kubectl argo rollouts undo model-server -n mlrelease-production" in said
    component = yaml.safe_load((w.k8s_dir / "overlays/production/release/kustomization.yaml").read_text())
    assert component["commonAnnotations"]["mlrelease.io/model-version"] == "6"
    assert fake.aliases["production"] == "6" and fake.versions["7"]["mlrelease.rolled_back"] == "p99 alarm"
    last = AuditLog(b.state_dir).records()[-1]
    assert (last["action"], last["from_version"], last["to_version"], last["alias"]) == (
        "rollback",
        "7",
        "6",
        "production",
    )
    assert last["evidence"]["target"] == "kubernetes" and last["by"] == "on-call"
    assert any(k.startswith("mlrelease.audit.") for k in fake.versions["6"])  # the registry's copy of the record
    again = rollback(b, w, None, "p99 alarm")  # idempotent: no second step back to 5
    assert "already rolled back from version 7 to 6" in again.lines[0] and fake.aliases["production"] == "6"
    assert len(AuditLog(b.state_dir).records()) == 4


def test_a_kubernetes_rollback_skips_a_withdrawn_version_and_a_dry_run_changes_nothing(tmp_path: Path) -> None:
    fake = registry()
    b, w = books(tmp_path, fake), where(tmp_path)
    promoted(b, "5", "6")
    b.audit.append(AuditRecord("rollback", "production", "x", to_version="5", from_version="6", alias="production"))
    promoted(b, "5", "7")  # 7 went out after the rollback to 5: its previous is 5, never the withdrawn 6
    out = rollback(b, w, None, None, dry_run=True)
    assert "would move alias production 7 -> 5" in out.lines[-1]
    assert fake.aliases["production"] == "7" and not (w.k8s_dir / "overlays/production/release").exists()
    with pytest.raises(UserError, match="not registered"):
        rollback(b, w, "9", None)
    fake.aliases.pop("production")
    with pytest.raises(UserError, match="nothing to roll back"):
        rollback(b, w, None, None)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], ("local", [])),
        (["--to", "3", "--target", "local"], ("local", ["--to", "3"])),
        (["--target=local", "--dry-run"], ("local", ["--dry-run"])),
        (["--target", "kubernetes", "--to", "3"], ("kubernetes", ["--target", "kubernetes", "--to", "3"])),
        (["--target", "nomad"], ("nomad", ["--target", "nomad"])),
    ],
)
def test_rollback_sh_takes_a_target_without_touching_the_local_fast_path(argv: list[str], expected: Any) -> None:
    assert fast_rollback._target(argv) == expected


def test_render_k8s_cli_pins_records_and_refuses_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlrelease.cli import app

    fake = registry()
    fake.aliases["staging"] = "7"
    fake.aliases["production"] = "6"
    monkeypatch.setattr(render_cmd, "_books", lambda params, by: books(tmp_path, fake))
    tree = k8s_tree(tmp_path)
    args = ["render", "k8s", "--k8s-dir", str(tree), "--params", str(REPO / "params.yaml")]
    done = CliRunner().invoke(app, [*args, "--env", "production", "--version", "staging", "--record", "PR #12"])
    assert done.exit_code == 0, done.output
    assert "version 7, localhost/bcc@sha256:" in done.output and "alias production -> 7 (was 6)" in done.output
    record = AuditLog(tmp_path / "state").records()[-1]
    assert (record["action"], record["to_version"], record["evidence"]["delivery"]) == ("promote", "7", "PR #12")
    fake.versions["7"].pop("image_digest")
    missing = CliRunner().invoke(app, [*args, "--env", "staging"])
    assert missing.exit_code == 2 and "`mlrelease build --version 7`" in missing.output
    assert missing.output.startswith("mlrelease render: version 7 has no image digest")
    assert len(missing.output.strip().splitlines()) == 1
    staged = CliRunner().invoke(app, [*args, "--env", "staging", "--version", "6", "--record", "x"])
    assert staged.exit_code == 2 and "--record is for production" in staged.output
