"""`promote staging` gated on the version's scanned image (``promotion.require_scanned_image``), its override, and
the image digest on every move's audit record and in `mlrelease history`, through the real command line against the
fakes of tests/fakes.py (see test_release_incidents.py). The registry write of `mlrelease scan` is checked against a
real image and registry in tests/integration/test_image_build.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.image.stage import scan_origin
from mlrelease.core.params import ParamsError, PromotionParams, load_params, section
from release.journal import Operation
from tests.fakes import DEAD_PID, MODEL_NAME, ImageTarget, digest_of, tag_image
from tests.unit.test_release_incidents import PROD, Desk, first_release, make_desk

STAGING = "staging"


def set_gate(desk: Desk, value: object) -> None:
    """Write ``promotion.require_scanned_image: value`` into the desk's params.yaml."""
    path = desk.home / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["promotion"]["require_scanned_image"] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture
def desk(tmp_path: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch) -> Desk:
    """A workspace with the image gate on, the candidate version 2."""
    found = make_desk(tmp_path / "home", bundle, monkeypatch)
    set_gate(found, True)
    found.registry.aliases["candidate"] = "2"
    return found


def staged(desk: Desk) -> str | None:
    return desk.target().slot_version(STAGING, "stable")


def history_json(desk: Desk) -> list[dict[str, Any]]:
    listed = desk.mlrelease("history", "--json")
    assert listed.code == 0, listed
    return [json.loads(line) for line in listed.out.splitlines() if line.strip()]


# ----- refusals: exit 2, one line, nothing changed ----------------------------------------------------------------
REFUSALS = [
    ("no image", None, "version 2 has no image: run `mlrelease build --version 2`, then `mlrelease scan`"),
    ("never scanned", {"scan": None}, f"the image {digest_of('2')[:19]} of version 2 has not passed `mlrelease scan`"),
    ("scanned failed", {"scan": "failed"}, "of version 2 was scanned as failed at "),
    (
        "other digest scanned",
        {"scanned": digest_of("9")},
        f"the scanned digest ({digest_of('9')[:19]}) differs from the built one: scan again (`mlrelease scan --image",
    ),
]


@pytest.mark.parametrize(("tags", "says"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_staging_refuses_a_version_whose_image_has_not_passed_its_scan(
    desk: Desk, tags: dict[str, Any] | None, says: str
) -> None:
    if tags is not None:
        tag_image(desk.registry, "2", **tags)
    before = dict(desk.registry.versions["2"])
    for args in (("promote", "staging", "--dry-run"), ("promote", "staging")):
        refused = desk.mlrelease(*args)
        assert refused.code == 2 and says in refused.said, refused
        assert "--force --reason TEXT" in refused.said and "promotion.require_scanned_image is on" in refused.said
        assert len(refused.err.strip().splitlines()) == 1 and "Traceback" not in refused.said, refused
    assert desk.audit() == [] and desk.journal.load().operation is None
    assert staged(desk) is None and STAGING not in desk.registry.aliases
    assert desk.registry.versions["2"] == before


def test_a_version_whose_image_passed_is_staged_with_its_digest(desk: Desk) -> None:
    digest = tag_image(desk.registry, "2")
    said = desk.ok("promote", "staging", "--dry-run", "--force", "--reason", "belt")
    assert "--force: the image gate needs no override (the image passed `mlrelease scan`); would be recorded" in said
    assert desk.audit() == [] and staged(desk) is None
    desk.ok("promote", "staging")
    assert staged(desk) == "2" and desk.registry.aliases[STAGING] == "2"
    record = desk.audit()[-1]
    assert (record["action"], record["outcome"], record["image_digest"]) == ("promote", "done", digest)
    assert record["evidence"]["image"] == {
        "gate": "passed",
        "ref": "localhost/breast-cancer-classifier:2-0123abcd",
        "scan": "passed",
        "scanned_digest": digest,
    }


def test_force_overrides_the_image_gate_only_and_is_recorded_forced(desk: Desk) -> None:
    refused = desk.mlrelease("promote", "staging", "--force")
    assert refused.code == 2 and "--force needs --reason: say why the image gate is overridden" in refused.said
    said = desk.ok("promote", "staging", "--force", "--reason", "cve-triaged-4711")
    assert "--force: the image gate is overridden: version 2 has no image" in said, said
    assert "recorded as forced: cve-triaged-4711" in said
    assert staged(desk) == "2"
    record = history_json(desk)[-1]
    assert (record["action"], record["outcome"]) == ("promote", "forced")
    assert record["reason"] == "smoke and load gates passed; forced: cve-triaged-4711"
    assert record["evidence"]["image"]["gate"].startswith("overridden: version 2 has no image")
    assert "smoke" in record["evidence"] and record["image_digest"] is None
    tagged = [json.loads(v) for k, v in desk.registry.versions["2"].items() if k.startswith("mlrelease.audit.")]
    assert [r["outcome"] for r in tagged] == ["forced"]
    desk.world.behaviour["3"] = "errors"  # the smoke test still runs under --force
    desk.registry.aliases["candidate"] = "3"
    failed = desk.mlrelease("promote", "staging", "--force", "--reason", "x")
    assert failed.code == 1 and "smoke test" in failed.said and staged(desk) == "2", failed


def test_with_the_gate_off_force_on_staging_is_still_refused(desk: Desk) -> None:
    set_gate(desk, "false")
    desk.kind = ImageTarget  # even where the slots run the image: false is off
    refused = desk.mlrelease("promote", "staging", "--force", "--reason", "x")
    assert refused.code == 2 and "promote staging has no --force" in refused.said, refused
    assert "the image gate it would override is off (promotion.require_scanned_image)" in refused.said
    no_image = desk.mlrelease("promote", "staging")  # no gate, but these slots need an image to run
    assert no_image.code != 0 and "has no serving image to run" in no_image.said, no_image
    digest = tag_image(desk.registry, "2", scan=None)  # built, never scanned
    desk.ok("promote", "staging")
    assert staged(desk) == "2" and desk.audit()[-1]["evidence"]["image"]["gate"] == "off"
    assert desk.world.images["2"] == f"localhost/{MODEL_NAME}@{digest}"  # the slot runs the image by digest


@pytest.mark.parametrize(("kind", "gated"), [(ImageTarget, True), (None, False)], ids=["image runtime", "processes"])
def test_auto_gates_only_where_the_slots_run_the_image(desk: Desk, kind: type[ImageTarget] | None, gated: bool) -> None:
    set_gate(desk, "auto")
    if kind is not None:
        desk.kind = kind
    run = desk.mlrelease("promote", "staging")
    assert (run.code, "has no image" in run.said) == ((2, True) if gated else (0, False)), run


def test_the_setting_takes_yaml_booleans_and_a_typo_fails_fast(tmp_path: Path) -> None:
    assert PromotionParams.model_validate({"require_scanned_image": True}).require_scanned_image == "true"
    assert PromotionParams().scanned_image_required(slots_run_image=False) is False
    assert PromotionParams().scanned_image_required(slots_run_image=True) is True
    assert PromotionParams(require_scanned_image="false").scanned_image_required(slots_run_image=True) is False
    params = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())
    params["promotion"]["require_scanned_image"] = "ture"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError, match="promotion.require_scanned_image: Input should be 'auto', 'true' or"):
        section(load_params(path), "promotion", PromotionParams)


def test_recovery_finishing_a_forced_staging_records_it_forced_with_its_digest(desk: Desk) -> None:
    """`promote staging --force` killed after its gates and switch: the next command finishes it as forced."""
    digest = tag_image(desk.registry, "2", scan="failed")
    desk.target().deploy(STAGING, "stable", desk.bundle, "2")
    state = desk.journal.load()
    state.operation = Operation(
        command="promote staging", version="2", pid=DEAD_PID, by="ci", reason="hotfix-12", forced=True
    )
    desk.journal.save(state)
    desk.ok("reconcile")
    record = desk.audit()[-1]
    assert (record["action"], record["outcome"], record["image_digest"]) == ("promote", "forced", digest)
    assert "its reason (forced): hotfix-12" in record["reason"]
    assert desk.registry.aliases[STAGING] == "2"


# ----- the digest of every move, in history -----------------------------------------------------------------------
def test_every_move_records_its_versions_digest_and_history_shows_it(desk: Desk) -> None:
    """Staging, canary (start, steps, pass), production and a rollback each carry the digest of the version they
    move to: history --json in full, the table in short."""
    d1, d2 = tag_image(desk.registry, "1"), tag_image(desk.registry, "2")
    first_release(desk, "1")
    desk.ok("promote", "staging")
    desk.ok("promote", "canary")
    desk.ok("promote", "production")
    desk.rollback_sh("--reason", "p99")
    records = history_json(desk)
    moves = [(r["action"], r["environment"], r["to_version"], r["image_digest"]) for r in records]
    assert moves == [
        ("promote", PROD, "1", d1),
        ("promote", STAGING, "2", d2),
        ("alias", PROD, "2", d2),
        ("traffic", PROD, "2", d2),
        ("canary-passed", PROD, "2", d2),
        ("promote", PROD, "2", d2),
        ("rollback", PROD, "1", d1),
    ], moves
    table = " ".join(desk.ok("history").split())
    assert "image" in table and d2[:19] in table and d1[:19] in table and d2[:20] not in table, table


def test_a_version_without_an_image_leaves_the_column_empty(desk: Desk) -> None:
    set_gate(desk, "false")
    desk.ok("promote", "staging")
    assert history_json(desk)[-1]["image_digest"] is None
    assert "sha256:" not in desk.ok("history")


# ----- which registry version a scan is recorded on ---------------------------------------------------------------
BUILT = {"image_ref": "localhost/m:3-abc", "image_digest": "sha256:aa", "model_name": "m", "model_version": "3"}
LABELS = {"io.mlrelease.model.name": "m", "org.opencontainers.image.version": "4"}


@pytest.mark.parametrize(
    ("built", "ref", "digest", "labels", "origin"),
    [
        (BUILT, "localhost/m:3-abc", "sha256:bb", LABELS, ("m", "3")),  # the report's image, by name
        (BUILT, "m@sha256:aa", "sha256:aa", {}, ("m", "3")),  # the report's image, by digest
        (BUILT, "localhost/m:4-abc", "sha256:cc", LABELS, ("m", "4")),  # another image: its labels say
        (None, "localhost/m:4-abc", "sha256:cc", LABELS, ("m", "4")),
        ({**BUILT, "model_version": "local"}, "localhost/m:3-abc", "sha256:aa", LABELS, None),  # a local build
        (None, "debian:12", "sha256:dd", {}, None),  # not an image of a registered version
    ],
)
def test_a_scan_is_recorded_on_the_version_its_image_was_built_from(
    built: dict[str, object] | None, ref: str, digest: str, labels: dict[str, object], origin: tuple[str, str] | None
) -> None:
    assert scan_origin(built, ref, digest, labels) == origin


def test_kubernetes_deliveries_and_rollbacks_record_their_digest_too(tmp_path: Path, bundle: Path) -> None:
    from release.k8s.bookkeeping import Books, record_delivery, record_rollback
    from tests.fakes import FakeRegistry

    fake = FakeRegistry(bundle)
    books = Books(registry=fake, state_dir=tmp_path, by="ci")  # type: ignore[arg-type]  # the fake registry
    d1, d2 = tag_image(fake, "1"), tag_image(fake, "2")
    record_delivery(books, "2", f"ghcr.io/team/bcc@{d2}", "PR #3", None)
    record_rollback(books, "2", "1", "p99", {})
    assert [(r["to_version"], r["image_digest"]) for r in books.audit.records()] == [("2", d2), ("1", d1)]
