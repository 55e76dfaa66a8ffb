"""Drain helper: `python -m agent.microk8s.drain drain|cordon|uncordon --kubeconfig P --node N`.

The only importer of kubernetes_asyncio. Importing any of it loads ~770 model modules (+38 MiB
resident), which the agent must not carry for the rest of its life for a few calls during an
upgrade; so the agent runs this module as a short-lived child (through `agent.microk8s.process`)
and reads its progress as JSON lines on stdout. The exit code is the outcome
(`kube_model.HelperExit`); the last line is `{"event": "result", "ok", "error", "max_rss_kib",
...}`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from collections.abc import Sequence
from typing import Any

import aiohttp
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config.config_exception import ConfigException

from agent.microk8s.kube_model import HelperExit, PodRef, pods_to_evict

BACKOFF_START_S = 1.0
BACKOFF_MAX_S = 10.0
WAIT_POLL_S = 1.0
REQUEST_TIMEOUT_S = 30.0


class Failed(Exception):
    """Ends the helper with an exit code and a reason."""

    def __init__(self, code: HelperExit, reason: str) -> None:
        super().__init__(reason)
        self.code = code


def emit(event: str, **fields: Any) -> None:
    """One JSON line on stdout, flushed at once: the parent relays it as progress."""
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


async def connect(kubeconfig: str) -> client.ApiClient:
    configuration = client.Configuration()
    try:
        await config.load_kube_config(
            config_file=kubeconfig, client_configuration=configuration, persist_config=False
        )
    except (ConfigException, OSError, ValueError) as exc:
        raise Failed(HelperExit.UNREACHABLE, f"cannot use {kubeconfig}: {exc}") from exc
    return client.ApiClient(configuration)


async def set_unschedulable(core: client.CoreV1Api, node: str, value: bool) -> None:
    """PATCH the node's spec.unschedulable (a strategic merge patch, as kubectl sends)."""
    body = {"spec": {"unschedulable": value}}
    await core.patch_node(node, body, _request_timeout=REQUEST_TIMEOUT_S)
    emit("cordoned" if value else "uncordoned", node=node)


async def list_pods(api: client.ApiClient, core: client.CoreV1Api, node: str) -> list[Any]:
    """The pods bound to `node`, as plain API dicts (camelCase, like the wire)."""
    pods = await core.list_pod_for_all_namespaces(
        field_selector=f"spec.nodeName={node}", _request_timeout=REQUEST_TIMEOUT_S
    )
    items = api.sanitize_for_serialization(pods).get("items") or []
    return [item for item in items if isinstance(item, dict)]


async def evict(core: client.CoreV1Api, pod: PodRef, deadline: float) -> None:
    """Evict one pod, waiting out PodDisruptionBudgets (HTTP 429) with backoff.

    Raises:
        Failed: any other refusal, or still blocked at the deadline (TIMED_OUT).
    """
    body = client.V1Eviction(
        api_version="policy/v1",
        kind="Eviction",
        metadata=client.V1ObjectMeta(name=pod.name, namespace=pod.namespace),
    )
    backoff = BACKOFF_START_S
    while True:
        try:
            await core.create_namespaced_pod_eviction(
                pod.name, pod.namespace, body, _request_timeout=REQUEST_TIMEOUT_S
            )
        except ApiException as exc:
            if exc.status == 404:
                return emit("evicted", pod=str(pod), already_gone=True)
            if exc.status != 429:
                raise Failed(HelperExit.FAILED, f"eviction of {pod}: {_reason(exc)}") from exc
            wait = min(backoff, max(0.0, deadline - time.monotonic()))
            if wait <= 0:
                raise Failed(
                    HelperExit.TIMED_OUT, f"eviction of {pod} still blocked: {_reason(exc)}"
                ) from exc
            emit("blocked", pod=str(pod), reason=_reason(exc), retry_in_s=round(wait, 2))
            await asyncio.sleep(wait)
            backoff = min(backoff * 2, BACKOFF_MAX_S)
        else:
            return emit("evicted", pod=str(pod))


async def wait_gone(
    api: client.ApiClient, core: client.CoreV1Api, node: str, pods: Sequence[PodRef]
) -> None:
    """Wait until the evicted pods have terminated (eviction only starts a graceful delete)."""
    wanted = {str(p) for p in pods}
    while True:
        present = await list_pods(api, core, node)
        left = sorted(wanted & {str(p) for p in pods_to_evict(present)[0]})
        if not left:
            return
        emit("waiting", pods=left)
        await asyncio.sleep(WAIT_POLL_S)


async def drain(api: client.ApiClient, node: str, timeout_s: float) -> dict[str, Any]:
    core = client.CoreV1Api(api)
    deadline = time.monotonic() + timeout_s
    await set_unschedulable(core, node, True)
    to_evict, skipped = pods_to_evict(await list_pods(api, core, node))
    emit("pods", evict=[str(p) for p in to_evict], skipped=[list(s) for s in skipped])
    async with asyncio.TaskGroup() as group:
        for pod in to_evict:
            group.create_task(evict(core, pod, deadline), name=f"evict-{pod}")
    try:
        async with asyncio.timeout_at(_loop_deadline(deadline)):
            if to_evict:
                await wait_gone(api, core, node, to_evict)
    except TimeoutError as exc:
        raise Failed(HelperExit.TIMED_OUT, "evicted pods did not terminate in time") from exc
    return {"evicted": len(to_evict), "skipped": len(skipped)}


async def run(verb: str, kubeconfig: str, node: str, timeout_s: float) -> dict[str, Any]:
    api = await connect(kubeconfig)
    async with api:
        if verb == "drain":
            return await drain(api, node, timeout_s)
        await set_unschedulable(client.CoreV1Api(api), node, verb == "cordon")
        return {}


async def main_async(args: argparse.Namespace) -> HelperExit:
    try:
        async with asyncio.timeout(args.timeout + 5):
            extra = await run(args.verb, args.kubeconfig, args.node, args.timeout)
    except (
        Failed,
        ApiException,
        aiohttp.ClientError,
        OSError,
        TimeoutError,
        ExceptionGroup,
    ) as exc:
        code, reason = classify(exc, args.verb, args.node, args.timeout)
        return _result(code, reason)
    return _result(HelperExit.OK, None, **extra)


def classify(exc: BaseException, verb: str, node: str, timeout_s: float) -> tuple[HelperExit, str]:
    """Exit code and reason for what ended the helper (the first failure of a task group)."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    if isinstance(exc, Failed):
        return exc.code, str(exc)
    if isinstance(exc, ApiException):
        return HelperExit.FAILED, f"{verb} {node}: {_reason(exc)}"
    if isinstance(exc, TimeoutError):
        return HelperExit.TIMED_OUT, f"{verb} did not finish in {timeout_s:g} s"
    if isinstance(exc, aiohttp.ClientError | OSError):
        return HelperExit.UNREACHABLE, f"Kubernetes API unreachable: {exc}"
    return HelperExit.FAILED, f"{type(exc).__name__}: {exc}"


def _result(code: HelperExit, error: str | None, **extra: Any) -> HelperExit:
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    emit("result", ok=code == HelperExit.OK, error=error, max_rss_kib=peak_kib, **extra)
    return code


def _reason(exc: ApiException) -> str:
    """The Status message of an API error (e.g. the PodDisruptionBudget that blocks)."""
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        body = {}
    message = body.get("message") if isinstance(body, dict) else None
    return f"HTTP {exc.status}: {message or exc.reason}"


def _loop_deadline(deadline: float) -> float:
    """Convert a time.monotonic() deadline to the event loop's clock."""
    loop = asyncio.get_running_loop()
    return loop.time() + max(0.0, deadline - time.monotonic())


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m agent.microk8s.drain", description=__doc__)
    parser.add_argument("verb", choices=["drain", "cordon", "uncordon"])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--node", required=True)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds (drain)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return int(asyncio.run(main_async(args)))


if __name__ == "__main__":
    raise SystemExit(main())
