#!/usr/bin/env python
"""Serving benchmark (also `mlrelease bench-serving`): see deploy/serving/bench.py for what is measured."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deploy.serving.bench import main

if __name__ == "__main__":
    sys.exit(main())
