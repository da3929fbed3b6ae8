"""Suite ``core_drills``: drills that need only the core client, the CLI and the local server.

* ``server-kill`` (5): the server dies by ``kill -9`` twice while two batches are in progress
  (one waited on by ``BatchClient``, one by ``AsyncBatchClient``) and comes back on the same port
  and data dir; both waits ride through the refused connections and every request is answered
  exactly once.
* ``security-cli-server`` (7c): the canary key never shows in ``batch-ops`` output (success
  and failure paths), results or the server's log; the server listens on 127.0.0.1 unless told
  otherwise; with ``api_key`` set, a missing or wrong key gets 401.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from drills._common import (
    BATCH_OPS,
    CANARY,
    CHAT,
    Drill,
    Proc,
    audit_server,
    chat_lines,
    oracle,
    wait_for,
    write_jsonl,
)

__all__ = ["run"]


def run(names: list[str], work: Path) -> list[Drill]:
    drills = {
        "server-kill": lambda d: server_kill(d, work / "server_kill"),
        "security-cli-server": lambda d: security_cli_server(d, work / "security"),
    }
    titles = {"server-kill": "server killed mid-batch", "security-cli-server": "CLI and server security"}
    results = []
    for name in names:
        print(f"-- {name}", flush=True)
        results.append(Drill(name, titles[name]).run(drills[name]))
    return results


# ---------------------------------------------------------------------------------------------
# 5. server killed mid-batch
# ---------------------------------------------------------------------------------------------


def server_kill(d: Drill, work: Path) -> None:
    """Two batches in progress, two ``kill -9`` of the server, two restarts: both clients'
    waits return ``completed`` and every request appears exactly once in the result files."""
    from batch_ops import AsyncBatchClient, BatchClient
    from batch_ops.server import serve_in_background

    n = 240
    work.mkdir(parents=True, exist_ok=True)
    # 480 requests, 4 at a time, 50 ms each: ~6 s of work, long enough to kill it twice mid-way.
    with serve_in_background(api_key=CANARY, request_latency=0.05, concurrency=4, seed=5) as url:
        sync_path = write_jsonl(work / "sync.jsonl", chat_lines("sync", n))
        async_path = write_jsonl(work / "async.jsonl", chat_lines("async", n))
        outcome: dict[str, Any] = {}

        with BatchClient(api_key=CANARY, base_url=url) as client:
            first = client.submit(sync_path, endpoint=CHAT)
            second = client.submit(async_path, endpoint=CHAT)

        def sync_wait() -> None:
            try:
                with BatchClient(api_key=CANARY, base_url=url) as c:
                    outcome["sync"] = c.batches.wait(first.id, poll_interval=0.2, timeout=180)
            except BaseException as exc:
                outcome["sync"] = exc

        async def async_wait() -> Any:
            async with AsyncBatchClient(api_key=CANARY, base_url=url) as c:
                return await c.batches.wait(second.id, poll_interval=0.2, timeout=180)

        def run_async() -> None:
            try:
                outcome["async"] = asyncio.run(async_wait())
            except BaseException as exc:
                outcome["async"] = exc

        # Daemons: if the runner stops this suite, the waits must not keep the process alive.
        threads = [threading.Thread(target=sync_wait, daemon=True), threading.Thread(target=run_async, daemon=True)]
        for t in threads:
            t.start()
        sdk = oracle(url)
        kills = []
        try:
            for share in (0.25, 0.6):
                def progressed(share: float = share) -> Any:
                    b = sdk.batches.retrieve(first.id)
                    done = b.request_counts.completed + b.request_counts.failed if b.request_counts else 0
                    return b if b.status == "in_progress" and done >= share * n else None

                before = wait_for(f"batch {share:.0%} done", progressed, timeout=60, interval=0.05)
                old_pid = url.pid
                url.kill()
                down_at = time.monotonic()
                try:
                    httpx.get(str(url).removesuffix("/v1") + "/healthz", timeout=1)
                    refused = False
                except httpx.ConnectError:
                    refused = True
                d.check(refused, "the killed server refuses connections (the clients really saw it down)")
                time.sleep(2.0)  # both waiters poll into a dead port meanwhile
                url.restart()
                after = sdk.batches.retrieve(first.id)
                kills.append({
                    "at": before.request_counts.completed, "after_restart": after.request_counts.completed,
                    "down_s": round(time.monotonic() - down_at, 1), "pids": (old_pid, url.pid),
                })
                d.check(after.request_counts.completed >= before.request_counts.completed,
                        f"no progress lost over the restart ({before.request_counts.completed} -> "
                        f"{after.request_counts.completed})")
            for t in threads:
                t.join(180)
        finally:
            sdk.close()

        for which, batch in (("sync", first), ("async", second)):
            got = outcome.get(which)
            ok = not isinstance(got, BaseException) and got is not None and got.status.value == "completed"
            d.check(ok, f"the {which} client's wait for {batch.id} returned completed (got {got!r:.200})")
        d.check(len(kills) == 2 and all(k["pids"][0] != k["pids"][1] for k in kills),
                "the server was killed twice and came back as a new process each time")
        audit = audit_server(url)
        d.check(len(audit.batches) == 2, f"the server holds 2 batches (holds {len(audit.batches)})")
        d.check(audit.statuses == {"completed": 2}, f"both completed ({audit.statuses})")
        d.check(audit.requests == 2 * n and audit.completed == 2 * n and audit.failed == 0,
                f"all {2 * n} requests answered ({audit.completed} ok, {audit.failed} failed)")
        d.check(not audit.problems, f"every request answered exactly once, with its own answer: {audit.problems}")
        d.figure("kills", "2 (at " + ", ".join(f"{k['at']}/{n}" for k in kills) + " of the first batch)")
        d.figure("downtime", "+".join(f"{k['down_s']}s" for k in kills))
        d.figure("answered", f"{audit.completed}/{2 * n} exactly once")


# ---------------------------------------------------------------------------------------------
# 7c. CLI and server
# ---------------------------------------------------------------------------------------------


def _listening(port: int) -> list[str]:
    """Local addresses (``ip:port``) listening on ``port``, from /proc/net/tcp and tcp6."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            local, state = fields[1], fields[3]
            addr, hexport = local.rsplit(":", 1)
            if state != "0A" or int(hexport, 16) != port:  # 0A = LISTEN
                continue
            if len(addr) == 8:  # IPv4, little-endian
                ip = ".".join(str(int(addr[i:i + 2], 16)) for i in (6, 4, 2, 0))
            else:
                ip = "::" if set(addr) == {"0"} else f"ipv6:{addr}"
            found.append(f"{ip}:{port}")
    return found


def _cli(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BATCH_OPS, *args], env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def security_cli_server(d: Drill, work: Path) -> None:
    """The key stays out of every CLI output and the server log; the server is loopback-only by
    default and enforces its key."""
    from batch_ops.server import serve_in_background
    from batch_ops.server.background import free_port

    work.mkdir(parents=True, exist_ok=True)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI", "BATCH_OPS"))}
    path = write_jsonl(work / "in.jsonl", chat_lines("cli", 12))

    # -- the server: loopback by default, in Python and from the command line ------------------
    with serve_in_background(api_key=CANARY, fail_requests=0.25, seed=3) as url:
        port = int(str(url).rsplit(":", 1)[1].split("/", 1)[0])
        where = _listening(port)
        d.check(where == [f"127.0.0.1:{port}"], f"serve_in_background() listens on 127.0.0.1 only ({where})")

        root = str(url).removesuffix("/v1")
        wrong = "sk-wrong-key-0000"
        answers = {
            "no key": httpx.get(f"{root}/v1/batches"),
            "wrong bearer": httpx.get(f"{root}/v1/batches", headers={"Authorization": f"Bearer {wrong}"}),
            "wrong api-key header": httpx.get(f"{root}/v1/batches", headers={"api-key": wrong}),
            "key as a query parameter": httpx.get(f"{root}/v1/batches", params={"api_key": CANARY}),
            "right key, wrong scheme": httpx.get(f"{root}/v1/batches", headers={"Authorization": f"Basic {CANARY}"}),
        }
        for what, answer in answers.items():
            d.check(answer.status_code == 401, f"{what}: 401 (got {answer.status_code})")
            d.check(CANARY not in answer.text and wrong not in answer.text, f"{what}: the 401 body echoes no key")
        good = httpx.get(f"{root}/v1/batches", headers={"Authorization": f"Bearer {CANARY}"})
        d.check(good.status_code == 200, f"the right bearer key: 200 (got {good.status_code})")
        health = httpx.get(f"{root}/healthz")
        d.check(health.status_code == 200 and CANARY not in health.text, "/healthz answers without a key, no key in it")

        # -- the CLI, on the happy path and on failures -----------------------------------------
        env = {**base_env, "OPENAI_API_KEY": CANARY, "OPENAI_BASE_URL": str(url)}
        outputs: dict[str, str] = {}
        runs = {
            "validate": ["validate", str(path), "--endpoint", CHAT],
            "submit --wait": ["submit", str(path), "--endpoint", CHAT, "--wait", "--poll-interval", "0.2"],
            "submit --json": ["submit", str(path), "--endpoint", CHAT, "--json"],
            "list": ["list"],
            "list --json": ["list", "--json"],
        }
        codes = {}
        for what, args in runs.items():
            proc = _cli(args, env)
            codes[what] = proc.returncode
            outputs[what] = proc.stdout + proc.stderr
        d.check(codes["validate"] == 0 and codes["submit --wait"] == 0 and codes["list"] == 0,
                f"the happy-path commands succeed ({codes})")
        created = json.loads(_cli(["list", "--json"], env).stdout or "{}")
        batch_ids = [b["id"] for b in created.get("data", [])] if isinstance(created, dict) else []
        d.check(len(batch_ids) == 2, f"two batches created by the CLI ({batch_ids})")
        if batch_ids:
            bid = batch_ids[-1]
            for what, args in {
                "status": ["status", bid],
                "status --json": ["status", bid, "--json"],
                "results": ["results", bid, "--output", str(work / "results.jsonl")],
                "cancel (already completed)": ["cancel", bid],
                "status of an unknown batch": ["status", "batch_does_not_exist"],
            }.items():
                proc = _cli(args, env)
                outputs[what] = proc.stdout + proc.stderr
            results_text = (work / "results.jsonl").read_text() if (work / "results.jsonl").exists() else ""
            d.check(bool(results_text) and CANARY not in results_text, "the results file holds results, no key")

        # Failures print errors: the key must not be among them.
        flag_env = {**base_env, "OPENAI_BASE_URL": str(url)}
        failing = {
            "rejected key (401)": (["list"], {**env, "OPENAI_API_KEY": "sk-not-the-server-key-1234"}),
            "key as a flag, server down": (
                ["list", "--api-key", CANARY, "--base-url", f"http://127.0.0.1:{free_port()}/v1", "--max-retries",
                 "0"], flag_env),
            "key as a flag, bad base URL": (["list", "--api-key", CANARY, "--base-url", "ftp://nowhere"], flag_env),
            "key as a flag, bad input": (["submit", str(work / "missing.jsonl"), "--endpoint", CHAT, "--api-key",
                                          CANARY], flag_env),
        }
        for what, (args, fenv) in failing.items():
            proc = _cli(args, fenv)
            outputs[what] = proc.stdout + proc.stderr
            d.check(proc.returncode != 0, f"{what}: exits non-zero (got {proc.returncode})")
        rejected = outputs["rejected key (401)"]
        d.check(_cli(["list"], {**env, "OPENAI_API_KEY": "sk-not-the-server-key-1234"}).returncode == 4,
                "a rejected key exits 4 (configuration)")
        d.check("sk-not-the-server-key-1234" not in rejected, "the rejected key is not echoed either")

        audit = audit_server(url)
        d.check(len(audit.batches) == 2 and audit.statuses == {"completed": 2} and audit.requests == 24
                and audit.completed + audit.failed == 24 and not audit.problems,
                f"the CLI's two batches completed, every request accounted for ({audit.statuses}, {audit.problems})")
        leaks = [what for what, text in outputs.items() if CANARY in text]
        d.check(not leaks, f"the key appears in no CLI output ({len(outputs)} commands; leaked in: {leaks})")
        server_log = url.log_path.read_text(errors="replace") if url.log_path.exists() else ""
        d.check(CANARY not in server_log, "the server's own log does not hold the key")
        d.figure("CLI runs", f"{len(outputs)} (success and failure), 0 leaks" if not leaks else f"leaks: {leaks}")

    # -- `batch-ops serve` with its defaults: loopback ---------------------------------------------
    port = free_port()
    serve = Proc("batch-ops serve", [BATCH_OPS, "serve", "--port", str(port), "--data-dir", str(work / "serve")],
                 env={**base_env, "BATCH_OPS_SERVER_API_KEY": CANARY}, log=work / "serve.log")
    try:
        wait_for("batch-ops serve listening", lambda: _listening(port), timeout=60, interval=0.2,
                 alive=lambda: None if serve.alive() else f"batch-ops serve exited:\n{serve.tail()}")
        where = _listening(port)
        d.check(where == [f"127.0.0.1:{port}"], f"`batch-ops serve` without --host listens on 127.0.0.1 ({where})")
        ps = Path(f"/proc/{serve.pid}/cmdline").read_bytes().decode(errors="replace")
        d.check(CANARY not in ps, "the server's key (from BATCH_OPS_SERVER_API_KEY) is not on its command line")
        d.check(httpx.get(f"http://127.0.0.1:{port}/v1/batches").status_code == 401,
                "`batch-ops serve` with BATCH_OPS_SERVER_API_KEY rejects a missing key with 401")
    finally:
        serve.stop()
    d.figure("server", "127.0.0.1 only; 401 for 5 kinds of bad auth")
