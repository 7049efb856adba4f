"""Deployment targets: where a model version runs and how traffic reaches it (local processes + nginx first)."""
