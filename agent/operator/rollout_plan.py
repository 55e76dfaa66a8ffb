"""Rolling upgrade of a cluster, the decisions (pure): plan, gates, soak, abort, resumable state.

`edge-agent fleet upgrade` (agent.operator.rollout does the MQTT) asks this module, from the
retained births/health/HA in a Roster, what to do next. The order is the one a careful operator
follows: workers first, in batches of `concurrency`; then control-plane nodes that are not
voters, one at a time; voters last, always one at a time. A node whose role is unknown counts as
a voter (the safe side). Before a control-plane node: every voter healthy with a quorum margin
of at least 1, no node in maintenance (in a cluster without `R/ha`, only the latter and
"one at a time" hold). A node is `succeeded` only after its health proves it (commit after
health, Mender's rule) for `soak_s` seconds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from agent.commands import upgrade_policy
from agent.operator.roster import NodeView

WORKER, CONTROL, VOTER = "worker", "control-plane", "voter"
CONTROL_ROLES = frozenset({"standby", "spare", "standalone"})
# Results of the summary; `pending` and `running` only appear in the state file.
FINAL = frozenset({"succeeded", "failed", "already", "not_started"})
HEALTHY_VERDICTS = frozenset({"healthy", "not_ha"})


@dataclasses.dataclass(frozen=True, slots=True)
class Options:
    """The knobs (README "Operator" and docs/operations.md give their anchors' names)."""

    channel: str
    concurrency: int = 1
    # None: not given. With neither given, the first failure aborts (max_failures 0).
    max_failures: int | None = None
    max_failure_percent: float | None = None
    soak_s: float = 60.0
    per_node_timeout_s: float = 900.0
    gate_timeout_s: float = 600.0
    drain: bool = True
    force: bool = False


def plan_class(role: str | None) -> str:
    """worker / control-plane / voter; None and anything unexpected count as a voter."""
    if role == "worker":
        return WORKER
    if role in CONTROL_ROLES:
        return CONTROL
    return VOTER


def track_version(channel: str) -> str | None:
    """`1.33/stable` and `1.33-strict/stable` -> `v1.33`; `latest/edge` -> None (unknown)."""
    try:
        minor = upgrade_policy.parse_channel(channel).minor
    except upgrade_policy.ChannelError:
        return None
    return None if minor is None else f"v{minor[0]}.{minor[1]}"


def is_already(view: NodeView, channel: str) -> bool:
    """On the target channel, and (when the track names one) on its minor version."""
    if view.microk8s("channel") != channel:
        return False
    want = track_version(channel)
    version = view.microk8s("version")
    return want is None or (isinstance(version, str) and version.startswith(want + "."))


def make_plan(
    views: Mapping[str, NodeView], names: Sequence[str], channel: str, concurrency: int
) -> tuple[list[list[str]], list[str]]:
    """(batches in order, nodes already there). Names keep a stable order inside each class."""
    already = sorted(n for n in names if n in views and is_already(views[n], channel))
    todo = sorted(n for n in names if n not in already)
    classes: dict[str, list[str]] = {WORKER: [], CONTROL: [], VOTER: []}
    for name in todo:
        view = views.get(name)
        classes[plan_class(view.role if view else None)].append(name)
    workers = classes[WORKER]
    batches = [workers[i : i + concurrency] for i in range(0, len(workers), max(1, concurrency))]
    batches += [[name] for name in classes[CONTROL]]
    batches += [[name] for name in classes[VOTER]]
    return batches, already


def gate(views: Mapping[str, NodeView], target: str) -> str | None:
    """Why `target` must not start yet, or None. Workers only need to be online."""
    view = views.get(target)
    if view is None or not view.online:
        return f"{target} is not online"
    if view.role == "worker":
        return None
    for name in sorted(views):
        if views[name].maintenance:
            return f"{name} is in maintenance"
    if not any(v.ha is not None for v in views.values()):
        return None  # HA checks are off in this cluster: one at a time is all we can do
    for name in sorted(views):
        voter = views[name]
        if voter.role != "voter":
            continue
        if not voter.online:
            return f"voter {name} is offline"
        if voter.verdict != "healthy":
            return f"voter {name} reports {voter.verdict or 'no verdict'}"
        if voter.margin is None or voter.margin < 1:
            return f"voter {name} reports a quorum margin of {voter.margin}"
    return None


def health_proof(view: NodeView | None, new_version: str | None) -> str | None:
    """Why the upgraded node is not (yet) proven healthy, or None when it is."""
    if view is None or not view.online:
        return "offline"
    status = view.health_status
    if status is None or status == "critical":
        reasons = (view.health or {}).get("reasons")
        detail = "; ".join(r for r in reasons if isinstance(r, str)) if reasons else ""
        return f"health {status or 'unknown'}" + (f" ({detail})" if detail else "")
    # The agent reports `succeeded` only once its Kubernetes node is Ready on the new version;
    # where the backend also reports readiness in every health message, it must stay so.
    if view.node_ready is False:
        return "Kubernetes node not Ready"
    for where, version in (("MicroK8s", view.microk8s("version")), ("kubelet", view.kubelet)):
        if new_version and version is not None and version != new_version:
            return f"{where} runs {version}, expected {new_version}"
    if new_version and view.microk8s("version") is None:
        return "MicroK8s version unknown"
    if view.ha is not None and view.verdict not in HEALTHY_VERDICTS:
        return f"HA verdict {view.verdict}"
    return None


@dataclasses.dataclass
class Soak:
    """Commit after health: the proof must hold without a break for `soak_s` seconds."""

    soak_s: float
    since: float | None = None
    last_reason: str | None = "no health report since the upgrade"

    def observe(self, now: float, reason: str | None) -> bool:
        """Record one observation; True once healthy for the whole soak."""
        self.last_reason = reason
        if reason is not None:
            self.since = None
            return False
        if self.since is None:
            self.since = now
        return now - self.since >= self.soak_s


# -- state (the resumable record, one JSON file) --------------------------------------------


def iso(ts: float | None) -> str | None:
    return None if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


@dataclasses.dataclass
class NodeRecord:
    node: str
    role: str
    result: str = "pending"  # pending | running | succeeded | failed | already | not_started
    old_version: str | None = None
    new_version: str | None = None
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    command_id: str | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "role": self.role,
            "result": self.result,
            "old_version": self.old_version,
            "new_version": self.new_version,
            "started": iso(self.started),
            "finished": iso(self.finished),
            "error": self.error,
        }


@dataclasses.dataclass
class RolloutState:
    rollout: str
    cluster: str
    channel: str
    batches: list[list[str]]
    records: dict[str, NodeRecord]
    aborted: bool = False

    @classmethod
    def new(
        cls,
        rollout: str,
        cluster: str,
        channel: str,
        views: Mapping[str, NodeView],
        plan: tuple[list[list[str]], list[str]],
    ) -> RolloutState:
        batches, already = plan
        records: dict[str, NodeRecord] = {}
        for name in [n for batch in batches for n in batch] + already:
            view = views.get(name)
            records[name] = NodeRecord(name, (view.role if view else None) or "unknown")
            if view is not None:
                records[name].old_version = view.microk8s("version")
        for name in already:
            records[name].result = "already"
            records[name].new_version = records[name].old_version
        return cls(rollout, cluster, channel, batches, records)

    @property
    def finished(self) -> bool:
        return self.aborted or all(r.result in FINAL for r in self.records.values())

    def next_batch(self) -> list[str] | None:
        """The first batch with a node not final: resumes mid-batch after a crash."""
        for batch in self.batches:
            left = [n for n in batch if self.records[n].result not in FINAL]
            if left:
                return left
        return None

    def failures(self) -> int:
        return sum(1 for r in self.records.values() if r.result == "failed")

    def abort_reason(self, options: Options) -> str | None:
        """AWS IoT Jobs' abort criteria: a count, or a percentage of the planned nodes."""
        failed = self.failures()
        limit = options.max_failures
        if limit is None and options.max_failure_percent is None:
            limit = 0
        if limit is not None and failed > limit:
            return f"{failed} failed (more than --max-failures {limit})"
        planned = sum(len(batch) for batch in self.batches)
        if options.max_failure_percent is not None and planned:
            percent = 100.0 * failed / planned
            if percent > options.max_failure_percent:
                return f"{percent:.0f}% failed (more than {options.max_failure_percent:g}%)"
        return None

    def abort(self, reason: str) -> None:
        """No node is touched after this: every node not started is `not_started`."""
        self.aborted = True
        for record in self.records.values():
            if record.result == "pending":
                record.result = "not_started"
                record.error = record.error or f"aborted: {reason}"

    def report(self, node: str | None, step: str, options: Options, now: float) -> dict[str, Any]:
        """The retained `{prefix}/{cluster}/rollout` progress report (the dashboard's banner)."""
        state = "aborted" if self.aborted else ("done" if self.finished else "running")
        return {
            "rollout": self.rollout,
            "channel": self.channel,
            "state": state,
            "node": node,
            "step": step,
            "done": sum(1 for r in self.records.values() if r.result in FINAL),
            "total": len(self.records),
            "failures": self.failures(),
            "max_failures": options.max_failures or 0,
            "aborted": self.aborted,
            "ts": round(now, 3),
        }

    def summary(self) -> dict[str, Any]:
        """The `--json` object of the issue, nodes in plan order (already ones last)."""
        return {
            "rollout": self.rollout,
            "channel": self.channel,
            "aborted": self.aborted,
            "nodes": [record.summary() for record in self.records.values()],
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": 1,
            "rollout": self.rollout,
            "cluster": self.cluster,
            "channel": self.channel,
            "batches": self.batches,
            "aborted": self.aborted,
            "records": [dataclasses.asdict(r) for r in self.records.values()],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RolloutState:
        """Raises ValueError (or KeyError/TypeError) on a file that is not ours."""
        if data.get("schema") != 1:
            raise ValueError("not an edge-agent rollout state (schema 1)")
        records = [NodeRecord(**raw) for raw in data["records"]]
        return cls(
            rollout=str(data["rollout"]),
            cluster=str(data["cluster"]),
            channel=str(data["channel"]),
            batches=[[str(n) for n in batch] for batch in data["batches"]],
            records={r.node: r for r in records},
            aborted=bool(data["aborted"]),
        )


def command_id(rollout: str, node: str) -> str:
    """The same id on every (re)send of one node's upgrade: the agent's journal deduplicates."""
    digest = hashlib.sha256(f"{rollout}/{node}".encode()).hexdigest()[:24]
    return f"u-{digest}"


def describe_plan(state: RolloutState) -> list[str]:
    """`--dry-run` lines: one per step."""
    lines = []
    for index, batch in enumerate(state.batches, start=1):
        roles = ", ".join(f"{n} ({state.records[n].role})" for n in batch)
        lines.append(f"step {index}: {roles}")
    already = [r.node for r in state.records.values() if r.result == "already"]
    if already:
        lines.append(f"already on {state.channel}: {', '.join(already)}")
    return lines


def unknown_names(names: Iterable[str], views: Mapping[str, NodeView]) -> list[str]:
    return sorted(n for n in names if n not in views or views[n].state is None)
