"""The release report: one self-contained HTML page per model version (identity, gates, plots, canary timeline,
history, comparison with production), for whoever approves, reviews or investigates a release.

:mod:`.sources` reads the workspace and the registry, :mod:`.gather` builds the :mod:`.model`, :mod:`.render` draws
it with Jinja2 and Plotly. Nothing heavy is imported here: ``mlrelease report`` imports what it uses.
"""
