"""Release orchestration: the promotion state machine, its journal and recovery, and the transitions
(staging, canary, production, rollback) driven through the DeploymentTarget interface and the registry."""
