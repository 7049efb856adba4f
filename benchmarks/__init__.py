"""Benchmarks of mlrelease against its peers: not packaged, not in the image, no product stage depends on them.

Each ``benchmarks/bench_*.py`` runs as a file (``.venv/bin/python benchmarks/bench_serving.py``) or as a module
(``python -m benchmarks.bench_serving``) and writes its figures to ``benchmarks/results/``; docs/benchmarks.md says
what each measures and the command behind each figure.
"""

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
