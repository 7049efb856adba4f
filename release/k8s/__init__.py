"""Kubernetes delivery: a release rendered for kustomize and Argo Rollouts (deploy/k8s), and its bookkeeping.

:mod:`release.k8s.manifests` and :mod:`release.k8s.analysis` are pure (params and a version in, file texts out);
:mod:`release.k8s.render` reads the registry and writes an overlay's ``release/`` component;
:mod:`release.k8s.bookkeeping` records a delivery or a rollback in the registry and the audit trail.
"""
