"""The operator's side: keygen, send, nodes (and the fleet tools)."""
