"""Commands: envelope, verbs, signing, journal, intake and worker, statuses, upgrade policy."""
