"""mlrelease: a DVC-staged release pipeline for PyTorch models (gates, registry, image, canary, rollback)."""

__version__ = "0.1.0"
