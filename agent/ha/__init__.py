"""HA: dqlite membership, probes, the peers' view, quorum verdicts and failover."""
