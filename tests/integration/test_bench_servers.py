"""The serving benchmark's model-less reference servers answer the same request alike, over real loopback sockets.

Their figures are only worth comparing if each does the same HTTP work: parse the request and its JSON body,
answer the same prediction body, keep the connection alive.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from mlrelease.core.net import free_port, stop_process

pytestmark = [pytest.mark.integration]
REPO = Path(__file__).resolve().parents[2]  # benchmarks/ is not installed: ``python -m benchmarks.bare`` runs from here
MODES = {"asgi": [], "fast": ["--fast"], "plain": ["--plain"]}
BODY = {"instances": [[1.0, 2.0, 3.0]]}


@pytest.fixture(scope="module")
def bare_servers() -> Iterator[dict[str, str]]:
    started: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    try:
        for mode, flags in MODES.items():
            port = free_port()
            command = [sys.executable, "-m", "benchmarks.bare", *flags, "--port", str(port)]
            started[mode] = (subprocess.Popen(command, cwd=REPO), f"http://127.0.0.1:{port}")
        for process, url in started.values():
            _wait_listening(process, url)
        yield {mode: url for mode, (_, url) in started.items()}
    finally:
        for process, _ in started.values():
            stop_process(process, timeout=5)


def _wait_listening(process: subprocess.Popen[bytes], url: str) -> None:
    port = int(url.rsplit(":", 1)[1])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, f"{url}: the server exited"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"{url}: nothing listens")


def test_every_bare_server_answers_the_same_prediction_on_one_connection(bare_servers: dict[str, str]) -> None:
    answers = {}
    for mode, url in bare_servers.items():
        with httpx.Client(base_url=url, timeout=5) as client:
            first = client.post("/v1/models/m:predict", json=BODY)
            second = client.post("/v1/models/m:predict", json=BODY)  # same connection, kept alive
        assert first.status_code == second.status_code == 200, (mode, first.text)
        assert first.headers["content-type"] == "application/json", mode
        answers[mode] = orjson.loads(second.content)
    assert answers["plain"] == answers["fast"] == answers["asgi"]
    assert answers["plain"]["predictions"][0]["class"] == "benign"


def test_the_plain_protocol_closes_a_connection_that_is_not_http(bare_servers: dict[str, str]) -> None:
    port = int(bare_servers["plain"].rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        assert sock.recv(100) == b""  # closed, no answer


def test_the_bench_reads_no_loop_lag_from_a_server_without_metrics(bare_servers: dict[str, str]) -> None:
    """Each bare server answers /metrics with its fixed prediction (or a 404): no lag histogram, and no crash."""
    from benchmarks.serving.probes import loop_lag
    from benchmarks.serving.servers import Candidate, served_runtime

    for url in bare_servers.values():
        assert loop_lag(url) is None
        assert served_runtime(url, Candidate("bare", "bare", "/v1/models/m:predict", b"{}", list, {}, "/ready")) is None


def test_wrk_posts_a_body_with_json_escapes_intact(bare_servers: dict[str, str]) -> None:
    """The body goes into wrk's Lua script: a JSON escape such as \\u00e9 must reach the server as sent."""
    from benchmarks.serving.wrk import wrk

    body = orjson.dumps({"instances": [[1.0, 2.0, 3.0]], "note": 'caf\u00e9 "quoted"'}, option=orjson.OPT_SORT_KEYS)
    body = body.replace("é".encode(), b"\\u00e9")  # as json.dumps(ensure_ascii=True) sends it
    result = wrk(bare_servers["plain"], "/v1/models/m:predict", body, 1, None)
    assert result["requests"] > 0 and result["errors"] == 0  # the plain server closes on a body it cannot parse


@pytest.mark.parametrize("flag", ["--burn-us", "--work-us"])
def test_a_cost_matched_plain_server_spends_the_cpu_it_is_told_per_request(flag: str) -> None:
    """--burn-us (CPU clock) and --work-us (calibrated fixed work) make each request cost that much more CPU, and
    the answer stays the same."""
    import psutil

    port = free_port()
    command = [sys.executable, "-m", "benchmarks.bare", "--plain", flag, "10000", "--port", str(port)]
    process = subprocess.Popen(command, cwd=REPO)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_listening(process, url)
        with httpx.Client(base_url=url, timeout=5) as client:
            client.post("/v1/models/m:predict", json=BODY)
            before = sum(psutil.Process(process.pid).cpu_times()[:2])
            answers = [client.post("/v1/models/m:predict", json=BODY) for _ in range(40)]
            spent = sum(psutil.Process(process.pid).cpu_times()[:2]) - before
        assert all(a.status_code == 200 and a.json()["predictions"] for a in answers)
        # 40 requests at 10 ms each are 0.4 s; the kernel counts in 10-ms ticks, and fixed work calibrated at
        # start runs faster if the core was slow then: a wide margin, still far above the ~0.01 s of no extra cost
        assert spent >= 0.2, f"{spent:.3f} s of CPU for 40 requests at 10 ms each ({flag})"
    finally:
        stop_process(process, timeout=5)


def test_measure_all_runs_peaks_and_latency_points_in_rounds_against_a_real_server(tmp_path: Path) -> None:
    """Two interleaved rounds on the plain server (wrk, real sockets): the peak and each paced point keep their
    median round (the worse of two) and every round whole."""
    from benchmarks.serving.config import base_env
    from benchmarks.serving.runner import measure_all
    from benchmarks.serving.servers import Candidate

    py = sys.executable
    plain = Candidate(
        "bare_plain",
        "plain",
        "/v1/models/m:predict",
        orjson.dumps(BODY),
        lambda p: [py, "-m", "benchmarks.bare", "--plain", "--port", str(p)],
        base_env(),
        "/",
    )
    results, steadiness = measure_all([plain], 1, tmp_path, rounds=2, probe=False)
    row = results["bare_plain"]
    assert steadiness == {} and len(row["peak_rps_rounds"]) == 2 and row["errors"] == 0 and row["rss_mb"] > 0
    for share in (0.5, 0.8):
        point = row[f"at_{int(share * 100)}"]
        p99s = [one["p99_ms"] for one in point["rounds"]]
        assert len(p99s) == 2 and point["p99_ms"] == max(p99s)
        assert {k: v for k, v in point.items() if k != "rounds"} in point["rounds"]
        assert all(one["target_rps"] == share * row["peak_rps"] and one["requests"] > 0 for one in point["rounds"])
        assert all(0 <= one["wrk_core_stolen_share"] <= 1 for one in point["rounds"])  # both cores read
        assert all(0 <= one["core_stolen_share"] <= 1 for one in point["rounds"])
    assert row["peak_rps"] == min(row["peak_rps_rounds"]) and len(row["cpu_ms_per_request_rounds"]) == 2


def test_the_memory_of_a_process_tree_counts_what_parent_and_child_share_once(tmp_path: Path) -> None:
    """mlflow serves from a worker its CLI starts: both map the same interpreter and libraries."""
    import subprocess
    import sys
    import time

    import psutil

    from benchmarks.serving.probes import rss_mb

    ready = tmp_path / "ready"  # written by the parent once its child has written its own mark: both idle then
    child = f"import pathlib, time; pathlib.Path({str(ready)!r} + '.child').touch(); time.sleep(60)"
    parent = (
        "import pathlib, subprocess, sys, time\n"
        f"subprocess.Popen([sys.executable, '-c', {child!r}])\n"
        f"while not pathlib.Path({str(ready)!r} + '.child').exists(): time.sleep(0.02)\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", parent])
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        tree = psutil.Process(proc.pid)
        rss = [p.memory_info().rss / 2**20 for p in [tree, *tree.children()]]
        assert len(rss) == 2
        assert max(rss) <= rss_mb(proc.pid) < sum(rss) - 1  # the shared interpreter pages count once
        assert rss_mb(tree.children()[0].pid) == pytest.approx(rss[1], rel=0.05)  # one process: its RSS
    finally:
        for p in psutil.Process(proc.pid).children():
            p.kill()
        proc.kill()
        proc.wait()


def test_the_steadiness_probe_runs_pinned_in_its_own_process_as_the_benchmark_starts_it() -> None:
    """core_steadiness starts ``python -m benchmarks.steadiness`` (pinned where taskset exists) and reads its JSON."""
    from benchmarks.serving.probes import core_steadiness

    summary = core_steadiness(0, 0.1)
    assert "error" not in summary, summary
    assert summary["windows"] == 10 and summary["behind_ms"] == 10.0  # the p99 target judges the backlog


@pytest.mark.parametrize(
    "script",
    ["bench_serving", "bench_http_layer", "bench_pipeline", "bench_rollback", "bench_runtime", "bare", "steadiness"],
)
def test_each_benchmark_runs_as_a_file_from_anywhere(script: str, tmp_path: Path) -> None:
    """``python benchmarks/<name>.py`` finds the repository's packages without an install, whatever the folder."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / f"{script}.py"), "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout
