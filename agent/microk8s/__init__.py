"""MicroK8s: backends, status parsing, snapd, cluster agent, Kubernetes clients, processes."""
