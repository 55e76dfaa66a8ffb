"""Where the agent runs: the snap's configure hook and paths, systemd's notify protocol."""
