"""The load-test gate: headless Locust against a running server, SLOs from params.yaml."""
