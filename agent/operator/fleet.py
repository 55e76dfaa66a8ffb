"""`edge-agent fleet upgrade --channel CH`: the command line of a rolling cluster upgrade.

Reads the cluster from its retained messages, plans (agent.operator.rollout_plan), then runs the
plan (agent.operator.rollout) while writing the state file after every step. Run again after a
crash of the operator, the same command resumes the unfinished rollout of that cluster and never
re-sends a finished node. Exit codes (agent.operator.exits): 0 every node succeeded or was
already there, 1 a node failed or the rollout aborted, 2 usage, 3 unknown nodes or no nodes,
5 local error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from agent import durable
from agent.commands import signing, upgrade_policy
from agent.errors import AgentError
from agent.operator import exits, session
from agent.operator import settings as opsettings
from agent.operator.rollout import FleetFeed, Runner
from agent.operator.rollout_plan import Options, RolloutState, describe_plan, make_plan
from agent.operator.roster import Roster
from agent.operator.tools import (
    OperatorExit,
    add_wait,
    format_table,
    node_name,
    run_command,
    seconds,
)

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


class UsageError(OperatorExit):
    """A problem with what was asked (exit 2)."""

    def __init__(self, message: str) -> None:
        super().__init__(exits.USAGE, message)


class NoNodes(OperatorExit):
    """Unknown node names, or no node in the cluster (exit 3)."""

    def __init__(self, message: str) -> None:
        super().__init__(exits.NO_ANSWER, message)


def default_state_path(cluster: str, environ: Mapping[str, str]) -> Path:
    """`$XDG_STATE_HOME/edge-agent/rollout-CLUSTER.json` (`~/.local/state/...` by default)."""
    home = environ.get("HOME", "~")
    base = environ.get("XDG_STATE_HOME") or str(Path(home) / ".local" / "state")
    return Path(base).expanduser() / "edge-agent" / f"rollout-{cluster}.json"


def _channel(value: str) -> str:
    try:
        upgrade_policy.parse_channel(value)
    except upgrade_policy.ChannelError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return value


def _node_list(value: str) -> list[str]:
    names = [part.strip() for part in value.split(",") if part.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give at least one node name")
    return [node_name(name) for name in names]


def add_commands(sub: Subparsers) -> None:
    fleet = sub.add_parser("fleet", help="act on a whole cluster (rolling upgrade)")
    verbs = fleet.add_subparsers(dest="fleet_verb", metavar="VERB", required=True)
    upgrade = verbs.add_parser(
        "upgrade",
        help="upgrade every node: workers, then control plane, voters one at a time",
        description="Plan, then upgrade node by node; commit each only after its health proves"
        " it. Exit codes: 0 all succeeded (or already there), 1 a node failed or the rollout"
        " aborted, 2 usage, 3 unknown or no nodes, 5 local error.",
    )
    opsettings.add_options(upgrade)
    add = upgrade.add_argument
    add("--channel", type=_channel, required=True, help="target snap channel, e.g. 1.33/stable")
    targets = upgrade.add_mutually_exclusive_group(required=True)
    targets.add_argument("--nodes", type=_node_list, metavar="A,B", help="these nodes only")
    targets.add_argument(
        "--all", action="store_true", help="every node with a retained birth in the cluster"
    )
    add("--concurrency", type=int, default=1, help="workers upgraded at once (default 1)")
    add(
        "--max-failures",
        type=int,
        default=None,
        metavar="N",
        help="abort once more than N nodes failed (default 0, unless a percent is given)",
    )
    add(
        "--max-failure-percent",
        type=float,
        default=None,
        metavar="P",
        help="abort once more than P%% of the planned nodes failed",
    )
    add(
        "--soak",
        type=seconds,
        default=60.0,
        metavar="S",
        help="seconds a node must stay healthy after its upgrade to count (default 60)",
    )
    add(
        "--per-node-timeout",
        type=seconds,
        default=900.0,
        metavar="S",
        help="seconds from sending a node's upgrade to its proof of health (default 900)",
    )
    add(
        "--gate-timeout",
        type=seconds,
        default=600.0,
        metavar="S",
        help="seconds a node may wait for its gate (quorum margin, maintenance) before the"
        " rollout aborts (default 600)",
    )
    drain = upgrade.add_mutually_exclusive_group()
    drain.add_argument(
        "--drain",
        dest="drain",
        action="store_true",
        default=True,
        help="cordon and drain each node first (default)",
    )
    drain.add_argument(
        "--no-drain", dest="drain", action="store_false", help="upgrade without draining"
    )
    add("--force", action="store_true", help="allow a skip of minor versions or a downgrade")
    add(
        "--state",
        type=Path,
        metavar="FILE",
        help="rollout state file (default ~/.local/state/edge-agent/rollout-CLUSTER.json)",
    )
    add("--dry-run", action="store_true", help="print the plan and exit")
    add("--json", action="store_true", help="print one JSON summary at the end")
    add_wait(upgrade)
    upgrade.set_defaults(func=cmd_fleet_upgrade)


def options_of(ns: argparse.Namespace) -> Options:
    if ns.concurrency < 1:
        raise UsageError("--concurrency: must be at least 1")
    if ns.max_failures is not None and ns.max_failures < 0:
        raise UsageError("--max-failures: must not be negative")
    if ns.max_failure_percent is not None and not 0 <= ns.max_failure_percent <= 100:
        raise UsageError("--max-failure-percent: must be 0 to 100")
    return Options(
        channel=ns.channel,
        concurrency=ns.concurrency,
        max_failures=ns.max_failures,
        max_failure_percent=ns.max_failure_percent,
        soak_s=ns.soak,
        per_node_timeout_s=ns.per_node_timeout,
        gate_timeout_s=ns.gate_timeout,
        drain=ns.drain,
        force=ns.force,
    )


def cmd_fleet_upgrade(ns: argparse.Namespace) -> int:
    return run_command(ns, "fleet upgrade", lambda effective: _fleet_upgrade(ns, effective))


async def _fleet_upgrade(ns: argparse.Namespace, effective: opsettings.OperatorSettings) -> int:
    options = options_of(ns)
    key = effective.signing_key
    signer = signing.Signer.from_file(Path(key)) if key else None
    state = await _fleet(ns, effective, options, signer)
    if state is None:
        return exits.OK  # dry run
    print_summary(state, as_json=ns.json)
    return exits.FAILED if state.aborted or state.failures() else exits.OK


def print_summary(state: RolloutState, *, as_json: bool) -> None:
    summary = state.summary()
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    rows = [["NODE", "ROLE", "RESULT", "OLD", "NEW", "ERROR"]]
    for node in summary["nodes"]:
        keys = ("node", "role", "result", "old_version", "new_version", "error")
        rows.append([str(node[key] or "-") for key in keys])
    print(format_table(rows))
    print(
        f"rollout {state.rollout} to {state.channel}: " + ("ABORTED" if state.aborted else "done")
    )


def progress_printer() -> Callable[[str], None]:
    tty = sys.stderr.isatty()

    def progress(line: str) -> None:
        if tty:
            print(f"{time.strftime('%H:%M:%S')}  {line}", file=sys.stderr, flush=True)

    return progress


def load_state(path: Path) -> RolloutState | None:
    """The unfinished rollout in `path`, or None (absent, or finished: a new one starts)."""
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise UsageError(f"--state {path}: unreadable ({exc}); remove it to start over") from exc
    try:
        state = RolloutState.from_json(data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UsageError(f"--state {path}: not a rollout state ({exc})") from exc
    return None if state.finished else state


def saver(path: Path) -> Callable[[RolloutState], None]:
    def save(state: RolloutState) -> None:
        body = json.dumps(state.to_json(), indent=1).encode()
        durable.atomic_write(path, body)

    return save


async def _fleet(
    ns: argparse.Namespace,
    effective: opsettings.OperatorSettings,
    options: Options,
    signer: signing.Signer | None,
) -> RolloutState | None:
    path = ns.state or default_state_path(effective.cluster, os.environ)
    resumed = load_state(path)
    if resumed is not None and (resumed.cluster, resumed.channel) != (
        effective.cluster,
        options.channel,
    ):
        raise UsageError(
            f"{path} holds an unfinished rollout of cluster {resumed.cluster!r} to"
            f" {resumed.channel}; finish it (run it again) or remove the file"
        )
    roster = Roster(effective.mqtt.prefix, effective.cluster)
    progress = progress_printer()
    async with session.connect(effective) as client:
        feed = FleetFeed(client, roster)
        await feed.subscribe()
        pump = asyncio.create_task(feed.pump(), name="fleet-pump")
        try:
            await asyncio.sleep(ns.wait)
            state = resumed or _new_state(ns, effective, options, roster)
            if ns.dry_run:
                _print_plan(state, as_json=ns.json)
                return None
            if resumed is not None:
                progress(f"resuming rollout {state.rollout} from {path}")
            runner = Runner(
                feed, state, options, signer=signer, save=saver(path), progress=progress
            )
            run = asyncio.create_task(runner.run(), name="fleet-rollout")
            await asyncio.wait({pump, run}, return_when=asyncio.FIRST_COMPLETED)
            if not run.done():  # the broker connection ended: the state file allows a resume
                run.cancel()
                pump.result()
                raise AgentError("the broker connection ended; run the command again to resume")
            return run.result()
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, AgentError):
                await pump


def _new_state(
    ns: argparse.Namespace,
    effective: opsettings.OperatorSettings,
    options: Options,
    roster: Roster,
) -> RolloutState:
    known = roster.known()
    if not known:
        raise NoNodes(f"no nodes in cluster {effective.cluster!r} ({roster.no_nodes_hint()})")
    names: list[str] = known if ns.all else ns.nodes
    missing = sorted(set(names) - set(known))
    if missing:
        raise NoNodes(
            f"no node {', '.join(map(repr, missing))} in cluster {effective.cluster!r}"
            f" (known: {', '.join(known)})"
        )
    plan = make_plan(roster.nodes, names, options.channel, options.concurrency)
    rollout = f"r-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(3)}"
    return RolloutState.new(rollout, effective.cluster, options.channel, roster.nodes, plan)


def _print_plan(state: RolloutState, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps({**state.summary(), "dry_run": True, "plan": state.batches}, indent=2))
    else:
        print("\n".join(describe_plan(state)))
