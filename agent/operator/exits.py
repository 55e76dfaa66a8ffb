"""Exit codes of the operator commands, one meaning each (documented in README "Operator").

0 done · 1 failed (the node ran it and it failed or timed out; a rollout with a failed node or
an abort) · 2 usage (bad flags, bad target, bad operator config) · 3 no answer (no such node,
node offline, no nodes in the cluster, no status in time) · 4 rejected (the node refused the
command) · 5 local error (broker unreachable, key unreadable, state file unwritable) ·
130 interrupted (Ctrl-C).
"""

from __future__ import annotations

OK = 0
FAILED = 1
USAGE = 2
NO_ANSWER = 3
REJECTED = 4
LOCAL = 5
INTERRUPTED = 130  # Ctrl-C, as a shell reports it; a rollout resumes on the next run
