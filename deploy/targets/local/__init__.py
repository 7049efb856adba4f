"""The local deployment target: server processes on loopback ports, one nginx per routed environment, and a
detached watcher per warm slot. Made by :func:`deploy.targets.make_target`; see :mod:`.target`."""

from deploy.targets.local.target import LocalTarget

__all__ = ["LocalTarget"]
