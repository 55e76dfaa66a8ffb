"""Fakes at the process or socket boundary, built from the recorded formats in tests/fixtures.

The executables here (`microk8s`, `snap`, `snapctl`) stand in for MicroK8s' CLI; the modules
serve snapd's REST API on a unix socket, the MicroK8s cluster agent and the Kubernetes API over
HTTPS. Every server records every request so tests assert what the agent sent.
"""
