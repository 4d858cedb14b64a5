"""The bridge's cost, and opencode's server as a peer, measured in one run.

1. Our client, in-process vs over HTTP (`sandbox-sessions serve` in a process of its own):
   events per second of a scripted turn read with `session.stream()`, and `shell("true")`
   round trips. Targets: HTTP >= 20,000 events/s and >= half the in-process rate; HTTP adds
   <= 1.5 ms to the in-process `shell("true")` p50.
2. Ours vs opencode's server (`opencode serve`, installed by `setup-opencode.sh`), both read
   by one plain HTTP client: a session created, a shell command's round trip, events per
   second of a turn streaming N text deltas from the same fake model.

Progress goes to stderr, the tables to stdout; `--json PATH` writes every sample.
`benchmarks/README.md` says how to run it, `docs/performance.md` ("The bridge") what each
row is exactly and what the figures were.

    .venv/bin/python benchmarks/bench_bridge.py [--deltas 20000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

HERE = Path(__file__).resolve().parent
# The sibling modules, and this checkout's library before any installed copy (the server
# process, started from the checkout's root, imports the same one).
sys.path[:0] = [str(HERE), str(HERE.parent)]

from bridge_measure import (  # noqa: E402
    Peer,
    StreamSample,
    client_events,
    client_shell,
    opencode_peer,
    ours_peer,
    scripted_turns,
)
from bridge_servers import (  # noqa: E402
    Running,
    StartError,
    fake_model,
    opencode_server,
    our_server,
)

from sandbox_sessions import AsyncSandboxClient, AsyncSessionHandle  # noqa: E402

EVENTS_FLOOR = 20_000
EVENTS_RATIO = 0.5
SHELL_ADDED_MS = 1.5


def progress(message: str) -> None:
    """One line on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def summary(samples: list[float]) -> dict[str, float]:
    """p50, p90, min and max of `samples`."""
    ordered = sorted(samples)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return {"p50": statistics.median(ordered), "p90": p90, "min": ordered[0],
            "max": ordered[-1], "n": len(ordered)}


def stream_summary(samples: list[StreamSample]) -> dict[str, Any]:
    """The median rate of the turns, and each turn's count, time and event types."""
    return {"rate_p50": statistics.median(s.rate for s in samples),
            "turns": [{"events": s.events, "seconds": s.seconds, "rate": s.rate,
                       "first_event_seconds": s.first, "types": dict(s.types)}
                      for s in samples]}


# --- part 1: our client, in-process vs HTTP ---------------------------------------------------


async def _session(client: AsyncSandboxClient, *, script: list[dict[str, Any]]
                   ) -> AsyncSessionHandle:
    """A new session of a scripted agent playing `script`."""
    agent = client.agent("bench-bridge", model="scripted", tools=[], script=script)
    return await agent.create_session(title="bench")


async def transports(server: Running, *, folder: Path, args: argparse.Namespace
                     ) -> dict[str, Any]:
    """Part 1: one session per transport, measured by turns (in-process, then HTTP, and
    again), so that whatever else loads the machine weighs on both alike. Shell calls
    first, on fresh sessions and a fresh server; then the event streams."""
    async with AsyncExitStack() as stack:
        clients = [AsyncSandboxClient(store=folder / "in-process.db"),
                   AsyncSandboxClient(base_url=server.url, token=server.token)]
        sessions = []
        for client in clients:
            await stack.enter_async_context(client)
            sessions.append(await _session(client, script=[]))
            stack.push_async_callback(sessions[-1].end)
        plain = ours_peer(server.url, token=server.token, model_url="")  # no turns
        peer = await stack.enter_async_context(plain)
        shell = await _shell_calls(sessions, peer=peer, args=args)
        events = await _event_turns(clients, args=args)
    results = {name: {"events": stream_summary(events[i]), "shell": summary(shell[i])}
               for i, name in enumerate(("in_process", "http"))}
    results["plain_http"] = {"shell": summary(shell[2]), "get_session": summary(shell[3])}
    return results


async def _shell_calls(sessions: list[AsyncSessionHandle], *, peer: Peer,
                       args: argparse.Namespace) -> list[list[float]]:
    """`shell("true")` in-process, through our HTTP client, through a plain one, and a
    plain `GET /sessions/{id}` (the server's floor for one request), interleaved."""
    progress(f"part 1: {args.shell_iters} shell(\"true\") each way")
    calls: list[Callable[[], Awaitable[list[float]]]] = [
        lambda: client_shell(sessions[0], iterations=1, warmup=0),
        lambda: client_shell(sessions[1], iterations=1, warmup=0),
        lambda: timed(peer.shell(sessions[1].id, command="true")),
        lambda: timed(peer.get_session(sessions[1].id))]
    samples: list[list[float]] = [[] for _ in calls]
    for _ in range(3):  # warm-up
        for call in calls:
            await call()
    # The order turns each round: a call leaves work behind (the in-process client's store
    # commit of its `shell-run` event, in a thread), which would always slow the same next one.
    for round_ in range(args.shell_iters):
        for step in range(len(calls)):
            index = (round_ + step) % len(calls)
            samples[index] += await calls[index]()
    return samples


async def _event_turns(clients: list[AsyncSandboxClient], *, args: argparse.Namespace
                       ) -> list[list[StreamSample]]:
    """`args.turns` rounds, each a timed turn through each client, after an untimed
    round. Every timed turn is the second of a new session, so that all start from the
    same (one-word) history: a turn's start reads the session's whole history."""
    progress(f"part 1: {args.turns} turns of {args.deltas:,} deltas each way")
    events: list[list[StreamSample]] = [[], []]
    for round_ in range(args.turns + 1):
        for index, client in enumerate(clients):
            session = await _session(client, script=scripted_turns(args.deltas))
            try:
                await client_events(session, turns=1)  # the one-word turn
                sample = await client_events(session, turns=1)
            finally:
                await session.end()
            if round_:  # the first round warms up imports and caches
                events[index] += sample
    return events


async def timed(call: Awaitable[object]) -> list[float]:
    """The wall time of awaiting `call`, as a list of one sample."""
    started = time.perf_counter()
    await call
    return [time.perf_counter() - started]


# --- part 2: ours vs opencode, one plain client ------------------------------------------------


async def peer_part(peer: Peer, *, args: argparse.Namespace) -> dict[str, Any]:
    """Sessions created, shell round trips and turns' events on one server."""
    progress(f"part 2: {peer.name}: {args.create_rounds} sessions created")
    created = []
    for _ in range(args.create_rounds + 1):  # the first one is a warm-up
        started = time.perf_counter()
        session_id = await peer.create_session()
        created.append(time.perf_counter() - started)
        await peer.end_session(session_id)
    session_id = await peer.create_session()
    try:
        progress(f"part 2: {peer.name}: {args.shell_iters} shell round trips")
        for _ in range(3):
            await peer.shell(session_id, command="true")
        shell, reads = [], []
        for _ in range(args.shell_iters):
            shell += await timed(peer.shell(session_id, command="true"))
            reads += await timed(peer.get_session(session_id))
    finally:
        await peer.end_session(session_id)
    progress(f"part 2: {peer.name}: {args.turns} turns of {args.deltas:,} deltas")
    turns = [await _peer_turn(peer, deltas=args.deltas) for _ in range(args.turns + 1)][1:]
    return {"create": summary(created[1:]), "shell": summary(shell),
            "get_session": summary(reads), "events": stream_summary(turns)}


async def _peer_turn(peer: Peer, *, deltas: int) -> StreamSample:
    """The second turn of a new session, after one of a single delta (which also takes
    opencode's title request, made on a session's first turn)."""
    session_id = await peer.create_session()
    try:
        await peer.turn(session_id, prompt="deltas=1")
        return await peer.turn(session_id, prompt=f"deltas={deltas}")
    finally:
        await peer.end_session(session_id)


async def peers(server: Running, *, folder: Path, model_url: str, args: argparse.Namespace
                ) -> dict[str, Any]:
    """Part 2: ours, then opencode."""
    results: dict[str, Any] = {}
    async with ours_peer(server.url, token=server.token, model_url=model_url) as peer:
        results["ours"] = await peer_part(peer, args=args)
    try:
        with opencode_server(folder, model_url=model_url) as opencode:
            progress(f"part 2: opencode serve at {opencode.url}")
            async with opencode_peer(opencode.url) as peer:
                results["opencode"] = await peer_part(peer, args=args)
    except StartError as exc:
        progress(f"part 2: opencode: {exc}")
        results["opencode"] = {"error": str(exc)}
    return results


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Both parts, against one bridge process and one fake model."""
    results: dict[str, Any] = {"meta": meta(args)}
    with tempfile.TemporaryDirectory(prefix="bench-bridge-") as name:
        folder = Path(name)
        with fake_model(folder) as model_url, our_server(folder) as server:
            progress(f"bridge at {server.url}, fake model at {model_url}")
            results["transports"] = await transports(server, folder=folder, args=args)
            if not args.skip_peer:
                results["peers"] = await peers(server, folder=folder, model_url=model_url,
                                               args=args)
    results["ratios"] = ratios(results)
    results["meta"]["load_average_after"] = os.getloadavg()
    progress("load average before {} and after {}".format(
        *(" ".join(f"{x:.2f}" for x in results["meta"][k])
          for k in ("load_average", "load_average_after"))))
    return results


def meta(args: argparse.Namespace) -> dict[str, Any]:
    """When, where and with what settings."""
    return {"date": datetime.now(UTC).isoformat(timespec="seconds"),
            "python": platform.python_version(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "load_average": os.getloadavg(),
            "settings": {k: v for k, v in vars(args).items() if k != "json"}}


# --- the ratios and the tables -----------------------------------------------------------------


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    """The targets' figures, and ours / opencode's."""
    local, http = results["transports"]["in_process"], results["transports"]["http"]
    http_rate = http["events"]["rate_p50"]
    rate_ratio = http_rate / local["events"]["rate_p50"]
    added_ms = (http["shell"]["p50"] - local["shell"]["p50"]) * 1000
    out: dict[str, Any] = {
        "http_events_per_second": http_rate, "http_over_in_process_events": rate_ratio,
        "shell_added_ms": added_ms,
        "targets": {"events_floor": http_rate >= EVENTS_FLOOR,
                    "events_ratio": rate_ratio >= EVENTS_RATIO,
                    "shell_added": added_ms <= SHELL_ADDED_MS}}
    ours, theirs = results.get("peers", {}).get("ours"), results.get("peers", {}).get("opencode")
    if ours and theirs and "error" not in theirs:
        out["ours_over_opencode"] = {
            "create_p50": ours["create"]["p50"] / theirs["create"]["p50"],
            "shell_p50": ours["shell"]["p50"] / theirs["shell"]["p50"],
            "events_per_second": ours["events"]["rate_p50"] / theirs["events"]["rate_p50"]}
    return out


def report(results: dict[str, Any]) -> None:
    """The tables, on stdout."""
    local, http = results["transports"]["in_process"], results["transports"]["http"]
    r = results["ratios"]
    print("## Our client: in-process vs HTTP (sandbox-sessions serve, own process)\n")
    print("| measure | in-process | HTTP | HTTP vs in-process | target |")
    print("| --- | ---: | ---: | ---: | --- |")
    print(f"| events/s, scripted turn (median of turns) | {local['events']['rate_p50']:,.0f} | "
          f"{http['events']['rate_p50']:,.0f} | x{r['http_over_in_process_events']:.2f} | "
          f">= {EVENTS_FLOOR:,}/s and >= x{EVENTS_RATIO}: "
          f"{_met(r['targets']['events_floor'] and r['targets']['events_ratio'])} |")
    print(f"| first event after, per turn | {_firsts(local)} | {_firsts(http)} | | |")
    print(f"| shell(\"true\") p50 | {_ms(local['shell']['p50'])} | {_ms(http['shell']['p50'])} "
          f"| +{r['shell_added_ms']:.2f} ms | <= +{SHELL_ADDED_MS} ms: "
          f"{_met(r['targets']['shell_added'])} |")
    print(f"| shell(\"true\") p90 | {_ms(local['shell']['p90'])} | {_ms(http['shell']['p90'])} "
          "| | |")
    plain = results["transports"]["plain_http"]
    print(f"| shell(\"true\") p50, plain httpx client | | {_ms(plain['shell']['p50'])} | "
          f"+{(plain['shell']['p50'] - local['shell']['p50']) * 1000:.2f} ms | |")
    print(f"| GET /sessions/{{id}} p50, plain httpx client | | "
          f"{_ms(plain['get_session']['p50'])} | | |")
    peers_ = results.get("peers")
    if not peers_:
        return
    ours, theirs = peers_["ours"], peers_["opencode"]
    print("\n## Ours vs opencode serve, one plain HTTP client\n")
    if "error" in theirs:
        print(f"opencode: ERROR {theirs['error']}")
        return
    q = r["ours_over_opencode"]
    print("| measure | ours | opencode | ours / opencode |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| session created, p50 | {_ms(ours['create']['p50'])} | "
          f"{_ms(theirs['create']['p50'])} | x{q['create_p50']:.2f} |")
    print(f"| shell round trip (`true`), p50 | {_ms(ours['shell']['p50'])} | "
          f"{_ms(theirs['shell']['p50'])} | x{q['shell_p50']:.2f} |")
    print(f"| shell round trip (`true`), p90 | {_ms(ours['shell']['p90'])} | "
          f"{_ms(theirs['shell']['p90'])} | |")
    print(f"| session read (GET), p50 | {_ms(ours['get_session']['p50'])} | "
          f"{_ms(theirs['get_session']['p50'])} | "
          f"x{ours['get_session']['p50'] / theirs['get_session']['p50']:.2f} |")
    print(f"| events/s of a turn (median of turns) | {ours['events']['rate_p50']:,.0f} | "
          f"{theirs['events']['rate_p50']:,.0f} | x{q['events_per_second']:.2f} |")
    print(f"| first event after, per turn | {_firsts(ours)} | {_firsts(theirs)} | |")
    print(f"| events in one turn | {ours['events']['turns'][0]['events']:,} | "
          f"{theirs['events']['turns'][0]['events']:,} | |")


def _firsts(case: dict[str, Any]) -> str:
    return ", ".join(f"{turn['first_event_seconds'] * 1000:.0f}"
                     for turn in case["events"]["turns"]) + " ms"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def main() -> int:
    """Parse the options, run, print, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deltas", type=int, default=20_000, help="text deltas per turn")
    parser.add_argument("--turns", type=int, default=3, help="timed turns per case")
    parser.add_argument("--shell-iters", type=int, default=200, help="timed shell calls")
    parser.add_argument("--create-rounds", type=int, default=5, help="timed sessions made")
    parser.add_argument("--skip-peer", action="store_true", help="part 1 only")
    parser.add_argument("--json", metavar="PATH", help="write every sample as JSON")
    args = parser.parse_args()
    results = anyio.run(run, args)
    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
