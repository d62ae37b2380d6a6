"""buildbot-gating: a Buildbot master configuration that gates RPM packaging repositories."""

__version__ = "0.1.0"
