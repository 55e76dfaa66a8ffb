"""Typed errors. Adapters convert third-party exceptions into these at their boundary."""

from __future__ import annotations


class AgentError(Exception):
    """Root of every error the agent raises on purpose."""


class ConfigError(AgentError):
    """The configuration is invalid; `problems` names every bad key at once."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


class TransportError(AgentError):
    """The MQTT link could not do what was asked (not connected, publish failed)."""


class StateError(AgentError):
    """The state directory cannot be read or written (full, read-only, missing)."""


class ProcessError(AgentError):
    """A subprocess could not be started (missing executable, permission)."""


class CommandTimedOut(AgentError):
    """A subprocess ran past its deadline and its process group was killed."""

    def __init__(self, limit_s: float, output: str) -> None:
        self.limit_s = limit_s
        self.output = output
        super().__init__(f"timed out after {limit_s:g} s")


class BackendError(AgentError):
    """A MicroK8s backend (cli, snapd, cluster agent, Kubernetes API) failed."""

    def __init__(self, message: str, *, kind: str = "", output: str = "") -> None:
        self.kind = kind
        self.output = output
        super().__init__(message)


class BackendUnavailable(BackendError):
    """No backend can reach MicroK8s on this node."""
