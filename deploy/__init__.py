"""Deployment code: the model server (deploy.serving) and the load-test gate (deploy.loadtest)."""
