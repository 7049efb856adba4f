"""Single-host delivery: a release rendered as a docker compose project (deploy/compose).

:mod:`release.compose.options` checks the render's options; :mod:`release.compose.spec` (the compose file) and
:mod:`release.compose.router` (the nginx router's config) are pure: versions, params and options in, file texts
out; :mod:`release.compose.render` reads the registry (through release.k8s.render's lookups) and writes the files.
"""
