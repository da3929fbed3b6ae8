"""Benchmark: N Airflow batch triggers in one event loop, polling the local server.

What a triggerer sees: N deferred batch tasks, each trigger polling its batch every
``--poll-interval`` seconds, all on one event loop. The local server answers every call after
``--latency`` seconds (default 0.1) and keeps the batches running for the whole window.

Rows (each in a fresh subprocess, so memory and the event loop are its own):

* ``batch_ops``: ``batch_ops.airflow.OpenAIBatchTrigger`` with core's async transport choice
  (``batch_ops._transport.AiohttpTransport`` when aiohttp is installed) and with httpx's own pool
  (``BATCH_OPS_ASYNC_TRANSPORT=httpx``);
* ``official``: ``airflow.providers.openai.triggers.openai.OpenAIBatchTrigger``
  (apache-airflow-providers-openai), run the same way;
* ``bare`` (reference, ``--impl bare``): a GET-sleep loop on one shared ``httpx.AsyncClient`` over
  core's transport, no parsing, no policy: what a trigger written on httpx's client API gets
  (ours sends to the transport directly and skips the client's per-request machinery).

Measured over a fixed window (default 8 s) from the moment the triggers start (their first
polls are spread over the first interval):

* event-loop lag: a ticker sleeps 10 ms in a loop and records how late it wakes (p50/p99/max);
* polls served: successful batch GETs (200) counted in the client;
* ideal polls: ``N * window / (poll_interval + latency)``: each poll cycle is one sleep plus
  one round trip. Our trigger's back-off (no progress -> longer intervals) is turned off with
  ``max_poll_interval=poll_interval`` so both triggers aim at the same rate. A trigger that
  blocks the loop stretches the window (the sleep returns late): its ideal uses the real time;
* CPU per poll: process CPU time over the window divided by the polls served (the triggers'
  start, connection lookup and first polls included);
* RSS per trigger: resident memory growth of the process divided by N.

A row whose event loop has not come back ``--stall-after`` seconds (default 60) after its window
ended is stopped there and reported as *stalled past N s*, with the polls served until then: a
loop that stays blocked for minutes (httpx's own pool at 1,000 triggers never came back within
460 s; the official trigger at 1,000 takes ~150 s for one round) shows the same in one minute.

Targets, printed when their row ran: at N = 1,000 (1 s polls) at least 80% of the ideal polls,
p99 loop lag under 200 ms and at most 0.3 ms of CPU per poll; at N = 10,000 (60 s polls, the
``make bench`` row) p99 loop lag under 100 ms with at least 80% of the ideal polls.

The machine must be otherwise idle: on 2 cores, any other load shows up in every column.

    python benchmarks/bench_triggers.py [--n 100 1000] [--window 8] [--poll-interval 1]
        [--latency 0.1] [--impl batch_ops official bare] [--transport aiohttp httpx]
        [--stall-after 60] [--json rows.json] [--markdown benchmarks/results/triggers.md]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
OURS = "batch_ops"
OFFICIAL = "official"
BARE = "bare"  # reference: a bare poll loop on one shared httpx client, core's transport choice


# ------------------------------------------------------------------------------------------
# child: one row, in its own process
# ------------------------------------------------------------------------------------------


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _count_ours(counter: dict[str, int]) -> None:
    # Count what the server answered: every 200 to GET /batches/{id}, wherever it came from.
    from batch_ops._drivers import AsyncDriver

    send_within = AsyncDriver.send_within

    async def counting(self: Any, send: Any) -> Any:
        reply = await send_within(self, send)
        if send.method == "GET" and send.path.startswith("/batches/") and reply.status == 200:
            counter["polls"] += 1
        return reply

    AsyncDriver.send_within = counting  # type: ignore[method-assign]


def _count_official(counter: dict[str, int]) -> None:
    from airflow.providers.openai.hooks.openai import OpenAIHook

    get_batch = OpenAIHook.get_batch

    def counting(self: Any, batch_id: str) -> Any:
        batch = get_batch(self, batch_id)
        counter["polls"] += 1
        return batch

    OpenAIHook.get_batch = counting  # type: ignore[method-assign]


class _BarePoller:
    """The least a poller can do: GET, sleep, repeat, on one shared client (no parsing, no policy)."""

    client: Any = None

    def __init__(self, url: str, batch_id: str, poll_interval: float, counter: dict[str, int]) -> None:
        self.url, self.batch_id, self.poll_interval, self.counter = url, batch_id, poll_interval, counter

    async def run(self) -> Any:
        import random

        import httpx

        from batch_ops._transport import default_async_transport

        if _BarePoller.client is None:
            _BarePoller.client = httpx.AsyncClient(transport=default_async_transport(), timeout=60,
                                                   limits=httpx.Limits(max_connections=200))
        await asyncio.sleep(random.uniform(0, self.poll_interval))
        while True:
            reply = await _BarePoller.client.get(f"{self.url}/batches/{self.batch_id}",
                                                 headers={"Authorization": "Bearer sk-bench"})
            if reply.status_code == 200:
                self.counter["polls"] += 1
            await asyncio.sleep(self.poll_interval)
        yield  # pragma: no cover


def _make_trigger(impl: str, batch_id: str, poll_interval: float) -> Any:
    if impl == OURS:
        from batch_ops.airflow import OpenAIBatchTrigger

        return OpenAIBatchTrigger(conn_id="openai_batch_default", batch_id=batch_id, poll_interval=poll_interval,
                                  max_poll_interval=poll_interval, timeout=3600)
    from airflow.providers.openai.triggers.openai import OpenAIBatchTrigger as Official

    return Official(conn_id="openai_bench", batch_id=batch_id, poll_interval=poll_interval, timeout=3600)


def _watchdog(counter: dict[str, int], started: float, cpu_started: float, limit: float,
              done: threading.Event) -> None:
    """Report what a row served so far and end the process when its loop has not come back by ``limit``
    seconds after the window started (a blocked loop cannot report anything itself)."""
    if done.wait(limit):
        return
    polls = counter["polls"]
    cpu = time.process_time() - cpu_started
    print("STALLED " + json.dumps({"polls": polls, "elapsed": time.perf_counter() - started, "cpu": cpu,
                                   "cpu_per_poll": cpu / polls if polls else None}), flush=True)
    os._exit(0)


async def _child(impl: str, batch_ids: list[str], window: float, poll_interval: float,
                 stall_after: float) -> dict[str, Any]:
    counter = {"polls": 0}
    if impl == BARE:
        url = json.loads(os.environ["AIRFLOW_CONN_OPENAI_BATCH_DEFAULT"])["host"]
        triggers: list[Any] = [_BarePoller(url, batch_id, poll_interval, counter) for batch_id in batch_ids]
    else:
        (_count_ours if impl == OURS else _count_official)(counter)
        triggers = [_make_trigger(impl, batch_id, poll_interval) for batch_id in batch_ids]
    lags: list[float] = []
    stop = False

    async def ticker() -> None:
        while not stop:
            before = time.perf_counter()
            await asyncio.sleep(0.01)
            lags.append(time.perf_counter() - before - 0.01)

    async def drive(trigger: Any) -> None:
        async for _event in trigger.run():  # a batch that ends early stops its trigger
            return

    rss_before = _rss_bytes()
    tick = asyncio.create_task(ticker())
    cpu_started = time.process_time()
    started = time.perf_counter()
    came_back = threading.Event()
    threading.Thread(target=_watchdog, args=(counter, started, cpu_started, window + stall_after, came_back),
                     daemon=True).start()
    tasks = [asyncio.create_task(drive(t)) for t in triggers]
    await asyncio.sleep(window)
    came_back.set()
    elapsed = time.perf_counter() - started  # longer than the window when the loop was blocked
    polls = counter["polls"]
    cpu = time.process_time() - cpu_started
    rss_after = _rss_bytes()
    stop = True
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, tick, return_exceptions=True)
    lags.sort()
    finished = sum(1 for t in tasks if t.done() and not t.cancelled() and t.exception() is None)
    return {
        "polls": polls,
        "elapsed": elapsed,
        "lag_p50": lags[len(lags) // 2] if lags else None,
        "lag_p99": lags[min(len(lags) - 1, int(len(lags) * 0.99))] if lags else None,
        "lag_max": lags[-1] if lags else None,
        "ticks": len(lags),
        "rss_per_trigger": (rss_after - rss_before) / max(len(triggers), 1),
        "cpu": cpu,
        "cpu_per_poll": cpu / polls if polls else None,
        "ended_early": finished,
    }


def child_main(args: argparse.Namespace) -> None:
    batch_ids = json.loads(Path(args.batch_ids).read_text())[: args.child_n]
    result = asyncio.run(_child(args.child_impl, batch_ids, args.window, args.poll_interval, args.stall_after))
    print("RESULT " + json.dumps(result), flush=True)


# ------------------------------------------------------------------------------------------
# parent: server, batches, rows, table
# ------------------------------------------------------------------------------------------


async def _create_batches(url: str, count: int) -> list[str]:
    from batch_ops import AsyncBatchClient

    async with AsyncBatchClient(api_key="sk-bench", base_url=url) as client:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "one.jsonl"
            path.write_text(json.dumps({"custom_id": "r-0", "method": "POST", "url": "/v1/chat/completions",
                                        "body": {"model": "m", "messages": [{"role": "user", "content": "x"}]}})
                            + "\n")
            uploaded = await client.files.upload(path)
        gate = asyncio.Semaphore(50)

        async def one() -> str:
            async with gate:
                batch = await client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions")
                return batch.id

        return list(await asyncio.gather(*(one() for _ in range(count))))


def _run_row(impl: str, transport: str, n: int, args: argparse.Namespace, env: dict[str, str],
             ids_file: Path) -> dict[str, Any]:
    row_env = dict(env)
    if transport == "httpx":
        row_env["BATCH_OPS_ASYNC_TRANSPORT"] = "httpx"
    else:
        row_env.pop("BATCH_OPS_ASYNC_TRANSPORT", None)
    cmd = [sys.executable, str(HERE), "--child-impl", impl, "--child-n", str(n), "--batch-ids", str(ids_file),
           "--window", str(args.window), "--poll-interval", str(args.poll_interval),
           "--stall-after", str(args.stall_after)]
    # The child stops itself stall_after seconds past its window; this bounds its start-up too.
    limit = args.window + args.stall_after + 300
    try:
        proc = subprocess.run(cmd, env=row_env, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        print(f"  no result after {limit:.0f} s: the child never reached its window", flush=True)
        return {"impl": impl, "transport": transport, "n": n, "polls": 0, "elapsed": limit, "ideal": None,
                "served": 0.0, "lag_p50": None, "lag_p99": None, "lag_max": None, "cpu_per_poll": None,
                "rss_per_trigger": None, "timed_out": True}
    lines = [line for line in proc.stdout.splitlines() if line.startswith(("RESULT ", "STALLED "))]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{impl}/{transport}/N={n} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    kind, _, data = lines[-1].partition(" ")
    result = json.loads(data)
    ideal = n * result["elapsed"] / (args.poll_interval + args.latency)
    result.update(impl=impl, transport=transport, n=n, ideal=ideal, served=result["polls"] / ideal)
    if kind == "STALLED":
        # The loop lagged at least this long: no tick came back to say more.
        print(f"  stalled past {args.stall_after:g} s: the event loop did not come back", flush=True)
        result.update(stalled=args.stall_after, lag_p50=None, lag_p99=None, lag_max=None, rss_per_trigger=None)
    return result


def _table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1000:,.0f}"

    head = (
        "| trigger | transport | N | window s | polls served | ideal | served % | loop lag p50 ms | p99 ms "
        "| max ms | CPU / poll ms | RSS / trigger KiB |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    body = []
    for r in rows:
        if r.get("timed_out"):
            body.append(f"| {r['impl']} | {r['transport']} | {r['n']:,} | > {r['elapsed']:,.0f} | no result: the "
                        "child never started its window | | | | | | | |")
            continue
        if r.get("stalled"):
            lag = f"> {r['stalled'] * 1000:,.0f}"
            body.append(
                f"| {r['impl']} | {r['transport']} | {r['n']:,} | stalled past {r['stalled']:g} s "
                f"({r['elapsed']:.0f}) | {r['polls']:,} | {r['ideal']:,.0f} | {r['served'] * 100:.0f}% | {lag} | {lag} "
                f"| {lag} | {'-' if r['cpu_per_poll'] is None else format(r['cpu_per_poll'] * 1000, '.2f')} | - |"
            )
            continue
        body.append(
            f"| {r['impl']} | {r['transport']} | {r['n']:,} | {r['elapsed']:.1f} | {r['polls']:,} | {r['ideal']:,.0f} "
            f"| {r['served'] * 100:.0f}% | {ms(r['lag_p50'])} | {ms(r['lag_p99'])} | {ms(r['lag_max'])} "
            f"| {'-' if r['cpu_per_poll'] is None else format(r['cpu_per_poll'] * 1000, '.2f')} "
            f"| {r['rss_per_trigger'] / 1024:,.1f} |"
        )
    note = (f"\npoll interval {args.poll_interval:g} s, server latency {args.latency:g} s, window {args.window:g} s; "
            "ideal = N x window / (poll interval + latency); a row stalled past N s: its event loop had not come "
            "back N s after the window ended, and was stopped"
            + (f"; median of {args.repeat} runs by polls served." if args.repeat > 1 else "."))
    return "\n".join([head, *body]) + note


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--window", type=float, default=8.0)
    parser.add_argument("--poll-interval", type=float, default=1.0)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--impl", nargs="+", default=[OURS, OFFICIAL], choices=[OURS, OFFICIAL, BARE])
    parser.add_argument("--transport", nargs="+", default=["aiohttp", "httpx"], choices=["aiohttp", "httpx"],
                        help="async transport rows for batch_ops (the official trigger uses its own sync client)")
    parser.add_argument("--stall-after", type=float, default=60.0,
                        help="stop a row whose event loop has not come back this many seconds after its window")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run each row this many times and keep the median by polls served (noisy machines)")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--markdown", help="also write the table to this file (e.g. benchmarks/results/triggers.md)")
    # internal: run one row
    parser.add_argument("--child-impl", help=argparse.SUPPRESS)
    parser.add_argument("--child-n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--batch-ids", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_impl:
        child_main(args)
        return 0

    from batch_ops.server import serve_in_background

    work = Path(tempfile.mkdtemp(prefix="bench_triggers_"))
    # One request per batch that takes an hour: every batch stays in progress (or queued).
    with serve_in_background(latency=args.latency, request_latency=3600, concurrency=4) as url:
        print(f"server {url} (latency {args.latency:g} s); creating {max(args.n):,} batches ...", flush=True)
        ids = asyncio.run(_create_batches(url, max(args.n)))
        ids_file = work / "batch_ids.json"
        ids_file.write_text(json.dumps(ids))
        home = work / "airflow_home"
        home.mkdir()
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW_CONN_OPENAI_BATCH_DEFAULT": json.dumps(
                {"conn_type": "openaibatch", "host": str(url), "password": "sk-bench"}),
            "AIRFLOW_CONN_OPENAI_BENCH": json.dumps({"conn_type": "openai", "host": str(url), "password": "sk-bench"}),
        }
        rows = []
        for n in args.n:
            for impl in args.impl:
                for transport in (["sync openai SDK"] if impl == OFFICIAL else args.transport):
                    print(f"running {impl} / {transport} / N={n:,} ...", flush=True)
                    runs = []
                    for _ in range(max(args.repeat, 1)):
                        r = _run_row(impl, transport, n, args, env, ids_file)
                        runs.append(r)
                        if not r.get("timed_out") and not r.get("stalled"):
                            print(f"  {r['polls']:,} polls of {r['ideal']:,.0f} ideal; "
                                  f"lag p99 {r['lag_p99'] * 1000:,.0f} ms; CPU per poll "
                                  f"{(r['cpu_per_poll'] or 0) * 1000:.2f} ms", flush=True)
                    runs.sort(key=lambda r: r["served"])
                    rows.append({**runs[len(runs) // 2], "runs": len(runs)})
    table = _table(rows, args)
    print()
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    if args.markdown:
        out = Path(args.markdown)
        out.parent.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        out.write_text(f"# Deferred batches: `bench_triggers.py`\n\n{stamp}, {os.cpu_count()} cores.\n\n{table}\n")
    for line in _targets(rows):
        print(line)
    return 0


def _targets(rows: list[dict[str, Any]]) -> list[str]:
    """One line per target whose row ran (ours, on the aiohttp transport)."""
    lines = []
    for r in rows:
        if r["impl"] != OURS or r["transport"] != "aiohttp" or r.get("timed_out") or r.get("stalled"):
            continue
        if r["n"] == 1000:
            ok = r["lag_p99"] < 0.2 and r["served"] >= 0.8
            lines.append(f"target at N=1,000 (p99 lag < 200 ms, >= 80% of ideal polls): {'met' if ok else 'NOT met'}")
            cpu = r["cpu_per_poll"]
            ok = cpu is not None and cpu <= 0.0003
            lines.append(f"target at N=1,000 (CPU per poll <= 0.3 ms): {'met' if ok else 'NOT met'} "
                         f"({'-' if cpu is None else format(cpu * 1000, '.2f')} ms)")
        if r["n"] == 10000:
            ok = r["lag_p99"] < 0.1 and r["served"] >= 0.8
            lines.append(f"target at N=10,000 (p99 lag < 100 ms, >= 80% of ideal polls): {'met' if ok else 'NOT met'} "
                         f"(p99 {r['lag_p99'] * 1000:.0f} ms, {r['served'] * 100:.0f}%)")
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
