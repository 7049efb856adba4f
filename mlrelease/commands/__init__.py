"""CLI command groups. Each module has ``register(app)`` and imports its heavy dependencies lazily."""
