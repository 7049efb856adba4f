"""MLflow model registry: register, aliases, gates, promotion, audit."""
