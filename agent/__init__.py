"""microk8s-edge-agent: the node agent of a MicroK8s edge cluster."""

__version__ = "0.1.0"
