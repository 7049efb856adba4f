"""The serving benchmark's parts: its settings, the wrk driver, machine probes, the servers, the runner, the report.

``benchmarks/bench_serving.py`` ties them together; see its docstring for what is measured.
"""
