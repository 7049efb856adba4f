"""Build, smoke-test and scan the serving image: the release artifact that staging, canary and production run."""
