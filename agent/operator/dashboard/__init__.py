"""`edge-agent dashboard`: a read-only fleet page fed by the cluster's retained messages."""
