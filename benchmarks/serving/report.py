"""The serving benchmark's verdicts and tables: ratios, targets, the markdown report and the runs file's summary."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from benchmarks.serving.config import (
    GENERATOR_BOUND_BUSY,
    SERVER_CPU,
    STEAL_KEYS,
    STEAL_WORTH_NAMING,
    TARGETS,
    UNSTEADY_SHARE,
)
from benchmarks.steadiness import describe


def point_rounds(point: dict[str, Any]) -> list[dict[str, Any]]:
    """Every round of a paced point (the point alone when it was measured once, as in older reports)."""
    rounds: list[dict[str, Any]] = point.get("rounds") or [point]
    return rounds


def round_ratio(top: list[float], bottom: list[float], kept: float) -> float:
    """The median of per-round ratios of two servers measured in the same interleaved rounds (each pair shared a
    stretch of the machine's noise); ``kept`` (the ratio of their kept rounds) when the rounds do not pair up."""
    if not top or len(top) != len(bottom):
        return kept
    return statistics.median(a / b for a, b in zip(top, bottom, strict=True))


def summarize(results: dict[str, dict[str, Any]], steadiness: dict[str, Any] | None = None) -> dict[str, Any]:
    """Ratios and pass/fail against the targets; the p99 verdict names the model-less servers that met it on the
    same core in the same run, and whether the steadiness probe found the core unsteady."""
    ours = results["mlrelease"]
    ratios: dict[str, float] = {"of_bare_asgi_ceiling": ours["peak_rps"] / results["bare_asgi"]["peak_rps"]}
    numpy_row = results.get("mlrelease_numpy")
    if numpy_row is not None and not fell_back(numpy_row):
        ratios["numpy_runner_vs_torchscript"] = numpy_row["peak_rps"] / ours["peak_rps"]
    again = results.get("mlrelease_beside_matched")
    for key in ("bare_work_matched", "bare_cpu_matched"):
        if key in results and again is not None:
            matched, name = results[key], key.removeprefix("bare_")
            ratios[f"{name}_cpu_vs_ours_at_peak"] = round_ratio(
                matched.get("cpu_ms_per_request_rounds", []),
                again.get("cpu_ms_per_request_rounds", []),
                matched["cpu_ms_per_request"] / again["cpu_ms_per_request"],
            )
            ratios[f"{name}_cpu_vs_ours_at_80"] = round_ratio(
                [point["cpu_ms_per_request"] for point in point_rounds(matched["at_80"])],
                [point["cpu_ms_per_request"] for point in point_rounds(again["at_80"])],
                matched["at_80"]["cpu_ms_per_request"] / again["at_80"]["cpu_ms_per_request"],
            )
    if "bare_fast" in results:
        ratios["of_bare_same_fast_path"] = ours["peak_rps"] / results["bare_fast"]["peak_rps"]
    checks = {
        "fraction_of_ceiling": (ratios["of_bare_asgi_ceiling"], TARGETS["min_fraction_of_ceiling"], ">="),
        "p99_ms_at_80": (ours["at_80"]["p99_ms"], TARGETS["max_p99_ms_at_80"], "<="),
        "rss_mb": (ours["rss_mb"], TARGETS["max_rss_mb"], "<="),
    }
    if "mlflow" in results:
        ratios["vs_mlflow"] = ours["peak_rps"] / results["mlflow"]["peak_rps"]
        ratios["cpu_per_request_vs_mlflow"] = ours["cpu_ms_per_request"] / results["mlflow"]["cpu_ms_per_request"]
        checks["speedup_vs_mlflow"] = (ratios["vs_mlflow"], TARGETS["min_speedup_vs_mlflow"], ">=")
    targets = {
        key: {
            "value": value,
            "target": f"{op} {limit:g}",
            "pass": value >= limit if op == ">=" else value <= limit,
        }
        for key, (value, limit, op) in checks.items()
    }
    targets["p99_ms_at_80"]["met_on_this_core_by"] = met_by_model_less(results)
    targets["p99_ms_at_80"]["rounds"] = [point["p99_ms"] for point in point_rounds(ours["at_80"])]
    if not steadiness:
        return {"ratios": ratios, "targets": targets}
    probes = [probe for probe in steadiness.values() if "error" not in probe]
    if probes:
        behind = max(probe["ideal_server_at_load"]["80%"]["share_of_windows_behind"] for probe in probes)
        targets["p99_ms_at_80"]["core_unsteady"] = behind > UNSTEADY_SHARE
    return {"ratios": ratios, "targets": targets, "steadiness": steadiness}


def fell_back(numpy_row: dict[str, Any]) -> bool:
    """The numpy-runner row was answered by TorchScript (``auto`` found no checked lowering)."""
    return numpy_row.get("runtime", "numpy") != "numpy"


def met_by_model_less(results: dict[str, dict[str, Any]]) -> list[str]:
    """The servers without a model whose own p99 at 80% of their peak met the target in this run: the same core
    allowed it to a server of their cost (the fixed-work references of our cost and half of it say most about
    ours; the CPU-clock one shows what the core's slow stretches add to real work, since they cannot lengthen it)."""
    limit = TARGETS["max_p99_ms_at_80"]
    bare = [item for key, item in results.items() if key.startswith("bare")]
    return [item["label"] for item in bare if item["at_80"]["p99_ms"] <= limit]


def each_round(point: dict[str, Any]) -> str:
    """``rounds 11.20 / 5.00 / 6.10`` for a point measured in rounds (the kept one is their median); else empty."""
    rounds = point_rounds(point)
    return "rounds " + " / ".join(f"{one['p99_ms']:.2f}" for one in rounds) if len(rounds) > 1 else ""


def saturated_point(label: str, share: int, point: dict[str, Any], percent: str = "%") -> str:
    """The point named if any of its rounds ran saturated (with how many, and whether the kept one did); else empty."""
    rounds = point_rounds(point)
    many = sum(bool(one["saturated"]) for one in rounds)
    if not many:
        return ""
    kept = "" if point["saturated"] else ", not the kept one"
    return f"{label} at {share}{percent}" + (f" ({many} of {len(rounds)} rounds{kept})" if len(rounds) > 1 else "")


def lag_over_rounds(point: dict[str, Any]) -> dict[str, float] | None:
    """The loop-lag samples of every round of a point taken together; None where a round has no lag reading."""
    lags = [one.get("loop_lag") for one in point_rounds(point)]
    if not all(lags):
        return None
    samples = sum(lag["samples"] for lag in lags if lag)
    late = sum(lag["samples"] * lag["share_over_10ms"] for lag in lags if lag)
    return {"samples": samples, "share_over_10ms": late / samples if samples else 0.0}


def server_row(item: dict[str, Any]) -> str:
    """One server's table row: peak, the paced points (each round's p99 where measured in rounds), CPU, memory."""
    a50, a80 = item["at_50"], item["at_80"]
    peak_cpu, paced_cpu = item["cpu_ms_per_request"], a80.get("cpu_ms_per_request")
    cpu = f"{peak_cpu:.3f}" + (f" / {paced_cpu:.3f} ({paced_cpu / peak_cpu:.2f}x)" if paced_cpu else "")
    rounds_50, rounds_80 = each_round(a50), each_round(a80)
    at_50 = f"{a50['p50_ms']:.2f} / {a50['p99_ms']:.2f}" + (f" ({rounds_50})" if rounds_50 else "")
    at_80 = f"{a80['p99_ms']:.2f} (p50 {a80['p50_ms']:.2f}" + (f"; {rounds_80})" if rounds_80 else ")")
    return (
        f"| {item['label']} | {item['peak_rps']:,.0f} | {at_50} | {at_80} | "
        f"{a80['rps']:,.0f} / {a80['target_rps']:,.0f} | {cpu} | {item['rss_mb']:.0f} | {item['errors']} |"
    )


def point_notes(servers: dict[str, dict[str, Any]]) -> list[str]:
    """Under the table: which figures are the kept rounds', saturated points, event-loop lag over all rounds."""
    lines: list[str] = []
    rounds = paced_round_count(servers)
    if rounds > 1:
        lines.append(
            f"- each paced point (p50, p99, req/s achieved, CPU at 80%) is its round of median p99 of {rounds} "
            "interleaved rounds; every round's p99 is in brackets, every round whole in the JSON"
        )
    saturated = [
        saturated_point(item["label"], share, item[f"at_{share}"]) for item in servers.values() for share in (50, 80)
    ]
    if any(saturated):
        named = ", ".join(point for point in saturated if point)
        lines.append(f"- paced points over 3% short of their target rate (saturated there): {named}")
    steal = paced_steal(servers)
    if steal:
        lines.append(f"- the host's share (steal) during the paced points at 80%, over all servers and rounds: {steal}")
    for item in servers.values():
        lags = [lag_over_rounds(item[f"at_{share}"]) for share in (50, 80)]
        if lags[0] is not None and lags[1] is not None:
            lines.append(
                f"- {item['label']}: its event-loop timer ran 10 ms or more late in {lags[0]['share_over_10ms']:.1%} "
                f"of {lags[0]['samples']:.0f} samples at 50%, {lags[1]['share_over_10ms']:.1%} of "
                f"{lags[1]['samples']:.0f} at 80%" + (f" (all {rounds} rounds)" if rounds > 1 else "")
            )
    return lines


def paced_round_count(servers: dict[str, dict[str, Any]]) -> int:
    """How many rounds the paced points ran in (1 in reports from before the rounds)."""
    return max(len(point_rounds(item["at_80"])) for item in servers.values())


def paced_steal(servers: dict[str, dict[str, Any]]) -> str:
    """``servers' core 0-12%, wrk's core 3-48%`` over every round of every 80% point that read them; else empty."""
    said = []
    for key, core in STEAL_KEYS.items():
        shares = [
            one[key] for item in servers.values() for one in point_rounds(item["at_80"]) if one.get(key) is not None
        ]
        if shares:
            said.append(f"{core} {min(shares):.0%}-{max(shares):.0%}")
    return ", ".join(said)


def steal_rounds(point: dict[str, Any]) -> list[list[float]] | None:
    """[servers' core, wrk's core] steal shares of every round of a paced point; None where a round lacks one."""
    rounds = point_rounds(point)
    if any(one.get(key) is None for one in rounds for key in STEAL_KEYS):
        return None
    return [[round(one[key], 3) for key in STEAL_KEYS] for one in rounds]


def peak_notes(servers: dict[str, dict[str, Any]]) -> list[str]:
    """Servers busy under 90% of their core at their peak: wrk or, with steal time, the host set that peak."""
    lines: list[str] = []
    for item in servers.values():
        busy = item["peak_rps"] * item["cpu_ms_per_request"] / 1000  # share of its one core the server used
        stolen = item.get("core_stolen_share")
        if busy >= GENERATOR_BOUND_BUSY:
            continue
        if stolen is not None and stolen >= STEAL_WORTH_NAMING:
            of_wrk = item.get("wrk_core_stolen_share")
            also = f" and {of_wrk:.0%} of wrk's" if of_wrk is not None else ""
            lines.append(
                f"- {item['label']}: busy {busy:.0%} of its core at its peak, while the host took {stolen:.0%} of "
                f"that core{also} (steal): the host or wrk, not the server, set it"
            )
        else:
            lines.append(f"- {item['label']}: busy {busy:.0%} of its core at its peak: wrk, not the server, set it")
    return lines


def verdicts(report: dict[str, Any]) -> list[str]:
    """Ratios, then each target's value and verdict (a p99 measured in rounds with every round's value)."""
    lines = [f"- {key}: {value:.2f}" for key, value in report["ratios"].items()]
    for key, check in report["targets"].items():
        verdict = "PASS" if check["pass"] else "FAIL"
        if not check["pass"] and check.get("met_on_this_core_by"):
            verdict += f" (met on the same core by: {', '.join(check['met_on_this_core_by'])})"
        elif not check["pass"] and check.get("core_unsteady"):
            verdict += " (the servers' core was unsteady: see the probe below)"
        rounds = check.get("rounds", [])
        spread = (
            f" (median of {len(rounds)} rounds: {' / '.join(f'{v:.2f}' for v in rounds)})" if len(rounds) > 1 else ""
        )
        lines.append(f"- target {key} {check['target']}: {check['value']:.2f}{spread} -> {verdict}")
    return lines


def markdown(report: dict[str, Any]) -> str:
    """The report in markdown: the table, the notes under it, the verdicts, the core probes and the setup."""
    servers = report["servers"]
    lines = [
        "| server | peak req/s | p50 / p99 at 50% (ms) | p99 at 80% (ms) | 80% point req/s achieved / target "
        "| CPU ms/req at peak / at 80% | RSS MB | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *(server_row(item) for item in servers.values()),
        "",
        *point_notes(servers),
        *peak_notes(servers),
    ]
    numpy_row = servers.get("mlrelease_numpy")
    if numpy_row is not None and fell_back(numpy_row):
        answered = numpy_row["runtime"]
        lines.append(f"- {numpy_row['label']}: answered by {answered} (no checked lowering), no numpy ratio")
    lines += verdicts(report)
    for when, probe in report.get("steadiness", {}).items():
        said = f"probe failed: {probe['error']}" if "error" in probe else describe(probe)
        lines.append(f"- servers' core (CPU {SERVER_CPU}), {when.replace('_', ' ')}: {said}")
    lines.append(f"\n{report['setup']}\n")
    return "\n".join(lines)


def run_summary(report: dict[str, Any]) -> dict[str, Any]:
    """One run's figures for the runs file (benchmarks/results/bench_serving_runs.json): the spread docs quote."""
    servers = report["servers"]
    lags = {k: [lag_over_rounds(v[f"at_{p}"]) for p in (50, 80)] for k, v in servers.items()}
    return {
        "paced_rounds": paced_round_count(servers),
        "peak_rps": {k: round(v["peak_rps"]) for k, v in servers.items()},
        "p99_ms_at_50": {k: round(v["at_50"]["p99_ms"], 2) for k, v in servers.items()},
        "p99_ms_at_80": {k: round(v["at_80"]["p99_ms"], 2) for k, v in servers.items()},
        "cpu_ms_per_request_peak_vs_at_80": {
            k: [
                round(v["cpu_ms_per_request"], 4),
                round(v["at_80"]["cpu_ms_per_request"], 4),
                round(v["at_80"]["cpu_ms_per_request"] / v["cpu_ms_per_request"], 2),
            ]
            for k, v in servers.items()
        },
        "loop_lag_share_over_10ms_at_50_80": {
            k: [lag["share_over_10ms"] for lag in pair if lag] for k, pair in lags.items() if all(pair)
        },
        "saturated_points": [
            named
            for k, v in servers.items()
            for p in (50, 80)
            if (named := saturated_point(k, p, v[f"at_{p}"], percent=""))
        ],
        "p99_ms_at_80_rounds": {
            k: [round(one["p99_ms"], 2) for one in point_rounds(v["at_80"])] for k, v in servers.items()
        },
        "wrk_core_stolen_share_at_peak": {
            k: round(v["wrk_core_stolen_share"], 3)
            for k, v in servers.items()
            if v.get("wrk_core_stolen_share") is not None
        },
        "cores_stolen_share_at_80_servers_wrk": {
            k: steal for k, v in servers.items() if (steal := steal_rounds(v["at_80"])) is not None
        },
        "servers_core_stolen_share_at_peak": {
            k: round(v["core_stolen_share"], 3) for k, v in servers.items() if v.get("core_stolen_share") is not None
        },
        "ratios": {k: round(v, 3) for k, v in report["ratios"].items()},
        "p99_target_met_on_this_core_by": report["targets"]["p99_ms_at_80"]["met_on_this_core_by"],
        "reference_labels": {
            k: v["label"]
            for k, v in servers.items()
            if k in ("bare_work_matched", "bare_work_half", "bare_cpu_matched")
        },
        "servers_core_ideal_server_at_80_percent_load": {
            k: {
                "share_of_windows_over_10ms_behind": round(
                    v["ideal_server_at_load"]["80%"]["share_of_windows_behind"], 3
                )
            }
            for k, v in report.get("steadiness", {}).items()
            if "error" not in v
        },
        "targets_pass": {k: v["pass"] for k, v in report["targets"].items()},
        "load_average": report["machine"]["load_average_1m_before_after"],
        "errors": {k: v["errors"] for k, v in servers.items()},
        "runtime_of_numpy_row": servers.get("mlrelease_numpy", {}).get("runtime"),
    }


def write_runs(path: Path, summaries: list[dict[str, Any]], what: str) -> None:
    """The runs file: this set of runs, with the sets already in the file kept under ``earlier_runs``."""
    earlier: list[dict[str, Any]] = []
    if path.is_file():
        old = json.loads(path.read_text())
        earlier = [{"what": old["what"], "runs": old["runs"]}, *old.get("earlier_runs", [])]
    path.write_text(json.dumps({"what": what, "runs": summaries, "earlier_runs": earlier}, indent=1) + "\n")
