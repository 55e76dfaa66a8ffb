"""Node health: sampling, Pi readings, the verdict, metrics, memory budget, the HTTP endpoint."""
