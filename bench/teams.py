"""``python -m bench.teams``: what client keys and usage accounting add, and that no usage is
lost.

Two Ki2API processes in front of one benchmark upstream, each with 4 accounts: one with client
keys and usage accounting switched off (``--unaccounted``, the baseline), one with 20 client
keys, each with an RPM, a TPM, a day's and a month's credit budget and a model allowlist (all
far from being reached). At concurrency 1, requests go in turn (the order shuffled every round)
to the upstream direct, to the baseline, to the keyed gateway with ``API_KEY`` (accounting
only), and to it with the 20 client keys in turn (key lookup, limits, accounting); "added" is
each median minus the direct median. Then the keyed gateway takes a closed loop of concurrent
streamed requests spread over the 20 keys, and the usage it reports (``/admin/usage``) must
count exactly the requests the upstream answered (``/_bench/count``). First, without any
server, the accounting's own CPU time per request: key lookup, admission and settlement on the
same store, timed over many requests (what the medians above cannot resolve).

    python -m bench.teams                    # about a minute
    python -m bench.teams --requests 600     # tighter medians
    python -m bench.teams --redis            # and the same gateway with REDIS_URL

With ``--redis`` a ``redis-server`` and a third gateway sharing its keys, limits and usage
through it (``REDIS_URL``) join the rounds: its 20 keys (each admission one script in
Redis), 20 keys whose only limit is a large rate (lent ahead: most admissions without a
round trip) and ``API_KEY``, against the keyed gateway on SQLite alone; the in-process timing
runs on both stores.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import orjson

from bench import targets
from bench.client import Result, Target, build_request
from bench.load import Clients, closed_loop
from bench.procs import (
    cpu_seconds,
    free_port,
    process_tree,
    spawn,
    wait_http,
    wait_ready_line,
)
from bench.stats import pct

ADMIN_KEY = "bench-admin-key-0123456789"
KEYS = 20
ACCOUNTS = 4
BUDGET = 10**11  # far from reached: every check runs, none refuses


def _gateway(
    stack: ExitStack, log_dir: Path, name: str, sim_url: str, *extra: str
) -> tuple[str, int]:
    port = free_port()
    argv = [sys.executable, "-m", "bench.gateway", "--port", str(port), "--upstream", sim_url]
    argv += ["--accounts", str(ACCOUNTS), "--admin-key", ADMIN_KEY, *extra]
    data = log_dir / f"data-{name}"
    env = {"HOME": str(log_dir), "DATA_DIR": str(data)}
    proc = spawn(name, argv, log_dir, env)
    stack.callback(proc.stop)
    url = f"http://127.0.0.1:{port}"
    wait_http(proc, f"{url}/health", 60)
    return url, proc.pid


def _call(url: str, method: str = "GET", body: Any = None) -> Any:
    data = None if body is None else orjson.dumps(body)
    request = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={"authorization": f"Bearer {ADMIN_KEY}", "content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return orjson.loads(answer.read())


FIELDS = {
    "rpm": BUDGET,
    "tpm": BUDGET,
    "credits_per_day": BUDGET,
    "credits_per_month": BUDGET,
    "models": ["claude-sonnet-*", "claude-opus-*"],
}


def make_keys(url: str, prefix: str = "user", fields: dict[str, Any] = FIELDS) -> list[str]:
    return [
        _call(f"{url}/admin/keys", "POST", {"name": f"{prefix}-{i:02d}", **fields})["secret"]
        for i in range(KEYS)
    ]


def usage_requests(url: str) -> int:
    rows = _call(f"{url}/admin/usage")["data"]
    return sum(int(row["requests"]) for row in rows)


def upstream_count(sim_url: str) -> int:
    with urllib.request.urlopen(f"{sim_url}/_bench/count", timeout=10) as answer:
        return int(orjson.loads(answer.read())["requests"])


def keyed_target(url: str, key: str, name: str) -> Target:
    base = targets.ki2api_openai(url, True)
    body = base.raw.split(b"\r\n\r\n", 1)[1]
    raw = build_request(
        base.host, base.port, "/v1/chat/completions", body, {"authorization": f"Bearer {key}"}
    )
    return Target(name, base.host, base.port, raw, base.marker, base.empty, True)


async def sequential(
    clients: Clients, groups: dict[str, list[Target]], count: int, warmup: int = 5
) -> dict[str, list[Result]]:
    """One request to each group in turn, shuffled each round; a group of several targets
    (the 20 keys) takes the next one each round."""
    rng = random.Random(1)
    out: dict[str, list[Result]] = {name: [] for name in groups}
    names = list(groups)
    for i in range(warmup + count):
        rng.shuffle(names)
        for name in names:
            group = groups[name]
            result = await clients.request(group[i % len(group)])
            if i >= warmup:
                out[name].append(result)
    return out


def median_ms(results: Sequence[Result]) -> float:
    return pct([r.latency * 1000 for r in results if r.ok], 50)


def spread_ms(results: Sequence[Result]) -> float:
    """Half the distance between the 25th and 75th percentile: how noisy the median is."""
    values = [r.latency * 1000 for r in results if r.ok]
    return (pct(values, 75) - pct(values, 25)) / 2


def paired_ms(results: dict[str, list[Result]], a: str, b: str) -> tuple[float, float, float]:
    """Round by round, ``b``'s latency minus ``a``'s (the same round: the same moment of this
    shared machine): the median, and the 25th and 75th percentiles, in ms."""
    diffs = [
        (rb.latency - ra.latency) * 1000
        for ra, rb in zip(results[a], results[b], strict=True)
        if ra.ok and rb.ok
    ]
    return pct(diffs, 50), pct(diffs, 25), pct(diffs, 75)


async def cpu_per_request(
    clients: Clients, groups: dict[str, tuple[list[Target], int]], count: int, blocks: int = 6
) -> dict[str, float]:
    """CPU time each gateway process spends per request (µs), from /proc: the gateways take
    turns in blocks, so that the machine's slow drift hits both alike."""
    spent = {name: 0.0 for name in groups}
    done = {name: 0 for name in groups}
    per_block = max(1, count // blocks)
    for block in range(blocks):
        for name, (group, pid) in groups.items():
            pids = process_tree(pid)
            before = cpu_seconds(pids)
            for i in range(per_block):
                result = await clients.request(group[(block * per_block + i) % len(group)])
                done[name] += result.ok
            spent[name] += cpu_seconds(pids) - before
    return {name: spent[name] / max(1, done[name]) * 1e6 for name in groups}


async def load(clients: Clients, keyed: list[Target], concurrency: int, count: int) -> int:
    """A closed loop spread over the keys; the number of requests that succeeded."""
    per_key = max(1, count // len(keyed))
    runs = await asyncio.gather(
        *(closed_loop(clients, t, max(1, concurrency // len(keyed)), per_key) for t in keyed)
    )
    return sum(1 for results in runs for r in results if r.ok)


async def accounting_cost(iterations: int, redis_url: str | None = None) -> tuple[float, float]:
    """Microseconds per request of the accounting on the request path, in this process: a
    client key's lookup, its admission (allowlist, RPM, TPM, credit budgets) and the
    settlement of its usage; and the same for ``API_KEY`` (the settlement alone). With
    ``redis_url``: on the Redis store (the admission's round trip included; the usage sent
    in the background, as it ends)."""
    from ki2api.kiro.wire.models import ModelCatalog
    from ki2api.model.context import RequestContext
    from ki2api.model.deltas import Usage
    from ki2api.settings import Settings
    from ki2api.shared.keystore import RedisStore
    from ki2api.shared.link import RedisLink
    from ki2api.store import SqliteStore, Store
    from ki2api.teams.gate import OPERATOR, Teams
    from ki2api.teams.manage import KeyAdmin

    settings = Settings()
    store: Store = SqliteStore(":memory:", flush_interval=3600)
    link = None
    if redis_url is not None:
        link = RedisLink(redis_url, prefix=f"bench-{time.monotonic_ns()}")
        store = RedisStore(link, SqliteStore(":memory:", flush_interval=3600), drain=False)
    teams = Teams(settings, store)
    await teams.open()
    if link is not None:
        await link.start()
    try:
        admin = KeyAdmin(teams)
        secrets = [
            (await admin.create({"name": f"user-{i:02d}", "rpm": BUDGET, "tpm": BUDGET,
                                 "credits_per_day": BUDGET, "credits_per_month": BUDGET,
                                 "models": ["claude-sonnet-*"]}))["secret"]
            for i in range(KEYS)
        ]  # fmt: skip
        model = ModelCatalog().resolve("claude-sonnet-4-5")
        usage = Usage(1200, 300, 0, "upstream", 0.0123)

        async def one(key: str | None) -> None:
            ctx = RequestContext("req")
            ctx.caller = OPERATOR if key is None else await teams.find(key)
            await teams.admit(ctx, "claude-sonnet-4-5", model)
            ctx.account = "bench-1"
            ctx.add_usage(usage)
            ctx.settle(200)

        out = []
        for pick in (lambda i: secrets[i % KEYS], lambda i: None):
            for i in range(1000):  # warm-up
                await one(pick(i))
            t0 = time.perf_counter()
            for i in range(iterations):
                await one(pick(i))
            await teams.store.flush()  # the usage sent meanwhile is part of the cost
            out.append((time.perf_counter() - t0) / iterations * 1e6)
        return out[0], out[1]
    finally:
        await teams.aclose()
        if link is not None:
            await link.aclose()


async def measure(
    sim_url: str,
    base: tuple[str, int],
    keyed: tuple[str, int],
    args: argparse.Namespace,
    shared: tuple[str, int, str] | None = None,
) -> int:
    base_url, keyed_url = base[0], keyed[0]
    stores = {"SQLite": None} if shared is None else {"SQLite": None, "Redis": shared[2]}
    for store, redis_url in stores.items():
        keyed_us, operator_us = await accounting_cost(args.iterations, redis_url)
        print(
            f"accounting on the request path, in-process, {store}: {keyed_us:.1f} µs per "
            f"request with a client key (lookup, limits, usage), {operator_us:.1f} µs with "
            "API_KEY (usage)",
            flush=True,
        )
    print()
    clients = Clients()
    keys = make_keys(keyed_url)
    groups = {
        "direct": [targets.direct_openai(sim_url, True)],
        "unaccounted": [targets.ki2api_openai(base_url, True)],
        "operator": [targets.ki2api_openai(keyed_url, True)],
        "20 keys": [keyed_target(keyed_url, k, f"key-{i}") for i, k in enumerate(keys)],
    }
    if shared is not None:
        url = shared[0]
        lent = make_keys(url, "rate", {"rpm": BUDGET})
        groups["redis operator"] = [targets.ki2api_openai(url, True)]
        groups["redis 20 keys"] = [
            keyed_target(url, k, f"rk-{i}") for i, k in enumerate(make_keys(url))
        ]
        groups["redis 20 lent"] = [keyed_target(url, k, f"rl-{i}") for i, k in enumerate(lent)]
    for name, group in groups.items():
        result = await clients.request(group[0])
        if not result.ok or not result.tokens:
            print(f"!! {name} does not work: {result.error or result.status}", flush=True)
            return 1
    print(f"concurrency 1: {args.requests} requests per target, interleaved ...", flush=True)
    results = await sequential(clients, groups, args.requests)
    direct = median_ms(results["direct"])
    print(f"\n{'target':14} {'median ms':>10} {'added ms':>9} {'± (IQR/2)':>10} {'errors':>7}")
    added = {}
    for name, rs in results.items():
        m = median_ms(rs)
        added[name] = m - direct
        errors = sum(1 for r in rs if not r.ok)
        print(f"{name:14} {m:10.2f} {added[name]:9.2f} {spread_ms(rs):10.2f} {errors:7d}")
    over = added["20 keys"] - added["unaccounted"]
    print(f"\naccounting + limits with 20 keys add {over:+.3f} ms at concurrency 1 (median)")
    print(f"accounting alone (API_KEY) adds {added['operator'] - added['unaccounted']:+.3f} ms")
    pairs = [("unaccounted", "operator"), ("unaccounted", "20 keys")]
    if shared is not None:
        pairs += [
            ("operator", "redis operator"),
            ("20 keys", "redis 20 keys"),
            ("20 keys", "redis 20 lent"),
        ]
    for a, b in pairs:
        median, low, high = paired_ms(results, a, b)
        print(
            f"paired by round, {b} minus {a}: median {median:+.3f} ms "
            f"(IQR {low:+.2f} .. {high:+.2f})"
        )
    print(f"\nCPU per request, {args.requests} requests each, in turns ...", flush=True)
    measured = {
        "unaccounted": (groups["unaccounted"], base[1]),
        "operator": (groups["operator"], keyed[1]),
        "20 keys": (groups["20 keys"], keyed[1]),
    }
    if shared is not None:
        for name in ("redis operator", "redis 20 keys", "redis 20 lent"):
            measured[name] = (groups[name], shared[1])
    cpu = await cpu_per_request(clients, measured, args.requests)
    for name, micros in cpu.items():
        print(f"  {name:12} {micros:8.0f} µs of gateway CPU per request")
    print(f"  20 keys minus unaccounted: {cpu['20 keys'] - cpu['unaccounted']:+.0f} µs")
    print(
        f"  20 keys minus operator (the same process): {cpu['20 keys'] - cpu['operator']:+.0f} µs"
    )
    if shared is not None:
        print(f"  redis 20 keys minus 20 keys: {cpu['redis 20 keys'] - cpu['20 keys']:+.0f} µs")

    await asyncio.sleep(0.5)  # every answer so far settled
    usage_before, upstream_before = usage_requests(keyed_url), upstream_count(sim_url)
    print(f"\nload: {args.load} streamed requests over {KEYS} keys, concurrency {args.concurrency}")
    t0 = time.perf_counter()
    ok = await load(clients, groups["20 keys"], args.concurrency, args.load)
    wall = time.perf_counter() - t0
    await asyncio.sleep(0.5)
    counted = usage_requests(keyed_url) - usage_before
    answered = upstream_count(sim_url) - upstream_before
    print(f"  {ok} succeeded in {wall:.1f} s ({ok / wall:.0f} req/s)")
    print(f"  upstream answered {answered}; the gateway's usage counts {counted}")
    clients.close()
    lost = answered - counted
    print("  no usage row lost" if lost == 0 else f"!! {lost} requests missing from the usage")
    return 0 if lost == 0 else 1


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.teams", description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=300, help="per target at concurrency 1")
    p.add_argument("--latency", type=float, default=0.005, help="upstream first byte, s")
    p.add_argument("--interval", type=float, default=0.001, help="between upstream chunks, s")
    p.add_argument("--chunks", type=int, default=20)
    p.add_argument("--load", type=int, default=2000, help="requests in the concurrent phase")
    p.add_argument("--concurrency", type=int, default=40)
    p.add_argument("--iterations", type=int, default=20000, help="of the in-process timing")
    p.add_argument("--redis", action="store_true", help="a third gateway with REDIS_URL")
    args = p.parse_args(argv)
    log_dir = Path(tempfile.mkdtemp(prefix="ki2api-bench-teams-"))
    print(f"ki2api bench: client keys ({KEYS}) on {ACCOUNTS} accounts; logs in {log_dir}")
    with ExitStack() as stack:
        sim_argv = [sys.executable, "-m", "bench.upstream", "--latency", str(args.latency)]
        sim_argv += ["--interval", str(args.interval), "--chunks", str(args.chunks)]
        sim = spawn("simulator", sim_argv, log_dir)
        stack.callback(sim.stop)
        sim_url = wait_ready_line(sim, 30)
        base = _gateway(stack, log_dir, "unaccounted", sim_url, "--unaccounted")
        keyed = _gateway(stack, log_dir, "keyed", sim_url)
        shared = None
        if args.redis:
            from bench.scaleout import start_redis

            _, redis_url = start_redis(stack, log_dir)
            url, pid = _gateway(stack, log_dir, "keyed-redis", sim_url, "--redis-url", redis_url)
            shared = (url, pid, redis_url)
        try:
            import uvloop

            code = uvloop.run(measure(sim_url, base, keyed, args, shared))
        except ImportError:
            code = asyncio.run(measure(sim_url, base, keyed, args, shared))
    sys.exit(code)


if __name__ == "__main__":
    main()
