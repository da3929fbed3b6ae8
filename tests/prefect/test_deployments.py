"""``run_batch`` as a subflow of deployed flows, run where Prefect runs them (issue 14).

Nothing here calls a flow in the test process. A real ``prefect server start`` (its own home,
SQLite database and free port; one for the module) runs deployments in processes of their own:

* ``.serve()``: the runner pickles the flow (cloudpickle, by value) into a spawned process;
* a ``process`` work-pool worker (``prefect worker start``): a deployment from source, which
  the flow-run process loads from its entrypoint, and a flow submitted to the pool as a bundle
  (``submit_to_work_pool``), which the worker's flow-run process unpickles;
* ``flows/nightly_eval.py`` itself, served the way its users serve it (``python flows/nightly_eval.py``).
* the server's scheduler service: the runs of served schedules (nightly_eval's cron; the parent
  flow every 5 s, paused until its test) are created by the server, and run.

After pickling, ``run_batch`` must still validate its parameters: with postponed annotations
(``from __future__ import annotations``) Prefect resolves them in the unpickled function's
globals, which hold only the names its body uses, and every run failed with
``PydanticUserError: `Run_BatchModel` is not fully defined; you should define `Path```.

Each test asserts the parent flow run and its ``run_batch`` subflow run COMPLETED, and that the
batch the subflow created (its metadata names the subflow run) completed on the local Batch API
server. Every process started here leads a process group of its own and is stopped, with its
children, by that group's id.
"""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cloudpickle
import httpx
import pytest

from batch_ops import BatchClient
from batch_ops.server import ServerURL, serve_in_background

ROOT = Path(__file__).resolve().parents[2]
NIGHTLY_EVAL = ROOT / "flows" / "nightly_eval.py"
EVAL_MATRIX = ROOT / "flows" / "eval_matrix.py"
BIN = Path(sys.executable).parent
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
ENDPOINT = "/v1/chat/completions"

#: The parent flow of the served and worker tests: one ``run_batch`` subflow on a request file.
PARENT_FLOW = textwrap.dedent('''
    from typing import Any

    from prefect import flow, serve

    from batch_ops.prefect import run_batch


    @flow(name="deploy-parent")
    async def parent(input_path: str, tag: str) -> dict[str, Any]:
        result = await run_batch(input_path=input_path, endpoint="/v1/chat/completions",
                                 metadata={"test": tag}, poll_interval=0.2)
        return result.model_dump(mode="json")


    @flow(name="deploy-budgeted")
    async def budgeted(input_path: str, tag: str, max_cost_usd: float, prices: dict[str, Any]) -> dict[str, Any]:
        result = await run_batch(input_path=input_path, endpoint="/v1/chat/completions", metadata={"test": tag},
                                 poll_interval=0.2, max_cost_usd=max_cost_usd, prices=prices)
        return result.model_dump(mode="json")


    if __name__ == "__main__":
        serve(parent.to_deployment(name="served"), budgeted.to_deployment(name="budgeted"))
''')

#: Structured outputs served: ``run_batch`` with a pydantic model and one repair round, then the results typed;
#: a run may carry a budget and a price table, name another Batch API server and write what it returns.
STRUCTURED_FLOW = textwrap.dedent('''
    import json
    import os
    from typing import Any

    from prefect import flow
    from pydantic import BaseModel

    from batch_ops.prefect import OpenAIBatchCredentials, read_batch_results, run_batch


    class City(BaseModel):
        name: str
        population: int
        tags: list[str]


    @flow(name="deploy-structured")
    async def structured(input_path: str, max_cost_usd: float | None = None, prices: dict[str, Any] | None = None,
                         base_url: str | None = None, out: str | None = None) -> dict[str, Any]:
        credentials = None if base_url is None else OpenAIBatchCredentials(
            api_key=os.environ["OPENAI_API_KEY"], base_url=base_url)
        result = await run_batch(input_path=input_path, endpoint="/v1/chat/completions", poll_interval=0.2,
                                 response_model=City, repair_rounds=1, repair_feedback=True,
                                 max_cost_usd=max_cost_usd, prices=prices, credentials=credentials)
        records = await read_batch_results(result, raw=False, credentials=credentials)
        answer = {"result": result.model_dump(mode="json"), "parsed": [r["parsed"] for r in records],
                  "invalid": [r["invalid"] for r in records]}
        if out:
            with open(out, "w") as f:
                json.dump(answer, f)
        return answer


    if __name__ == "__main__":
        structured.serve(name="structured")
''')

#: The served repair-under-budget run: USD per 1M tokens (the answers are what costs), each request's output limit,
#: and a budget just above attempt 0's upper bound (~$0.03001). Its answers cost ~$0.03 (15 tokens each; ~$0.022
#: where the server counts without the tokenizer); half of them invalid, the repair round's bound (~$0.0015 a
#: request) takes the chain past the budget either way.
STRUCTURED_PRICES = {"gpt-4o-mini": {"input": 0.001, "output": 100}}
STRUCTURED_ANSWER_TOKENS = 15
STRUCTURED_TIGHT_BUDGET = 0.0301

#: Bundle storage for the work pool: a directory on this machine (``--mode upload`` copies the
#: bundle there from the submitter's temporary directory; ``--mode execute`` runs it).
BUNDLE_STEPS = textwrap.dedent('''
    import argparse
    import shutil
    from pathlib import Path


    def main() -> None:
        parser = argparse.ArgumentParser()
        for name in ("--dir", "--mode", "--key"):
            parser.add_argument(name, required=True)
        parser.add_argument("rest", nargs="*")
        args = parser.parse_args()
        store = Path(args.dir)
        if args.mode == "upload":
            store.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path.cwd() / args.key, store / args.key)
        else:
            from prefect.bundles.execute import execute_bundle_from_file

            execute_bundle_from_file(str(store / args.key))


    if __name__ == "__main__":  # the bundle runs in a spawned child, which imports this module again
        main()
''')

#: Deploys the parent from source to the pool, runs the deployment, and submits the same flow to
#: the pool as a bundle; writes both flow run ids to a file.
DEPLOY_AND_SUBMIT = textwrap.dedent('''
    import json
    import sys

    from prefect import flow
    from prefect.deployments import run_deployment
    from prefect.flows import bind_flow_to_infrastructure
    from prefect.workers.process import ProcessWorker

    from deploy_parent import parent

    source, pool, path, out = sys.argv[1:5]
    flow.from_source(source=source, entrypoint="deploy_parent.py:parent").deploy(
        name="pool", work_pool_name=pool, print_next_steps=False, ignore_warnings=True)
    run = run_deployment("deploy-parent/pool", parameters={"input_path": path, "tag": "worker-deployment"},
                         timeout=0)
    bound = bind_flow_to_infrastructure(parent, pool, ProcessWorker, launcher=[sys.executable])
    future = bound.submit_to_work_pool(input_path=path, tag="worker-bundle")
    with open(out, "w") as f:
        json.dump({"deployment": str(run.id), "bundle": str(future.flow_run_id)}, f)
''')


#: The parent flow served on a schedule of a few seconds, paused until its test resumes it: then the
#: server's scheduler service, not the test, creates its runs (``limit=1``: one at a time).
SERVE_SCHEDULED = textwrap.dedent('''
    import sys

    from deploy_parent import parent

    parent.serve(name="scheduled", interval=5, paused=True, limit=1,
                 parameters={"input_path": sys.argv[1], "tag": "scheduled"})
''')


#: Served with a deployment trigger: a run whenever a batch of pipeline "on-event" completes, with
#: the batch's id and output file from the event (the receiver's ``--prefect`` emits it).
SERVE_ON_EVENT = textwrap.dedent('''
    from prefect import flow
    from prefect.events import DeploymentEventTrigger

    from batch_ops.prefect import download_batch_file


    @flow(name="score-on-event")
    async def score_on_event(batch_id: str, output_file_id: str) -> int:
        path = await download_batch_file(output_file_id, f"{batch_id}.jsonl")
        with open(path) as f:
            return sum(1 for _ in f)


    if __name__ == "__main__":
        score_on_event.serve(name="on-event", triggers=[DeploymentEventTrigger(
            expect={"batch_ops.batch.completed"},
            match={"prefect.resource.id": "openai.batch.*", "openai.batch.metadata.pipeline": "on-event"},
            parameters={"batch_id": "{{ event.payload.batch_id }}",
                        "output_file_id": "{{ event.payload.output_file_id }}"},
        )])
''')


#: The other batch APIs, each from a saved credentials block per scenario (``e2e-<provider>-<scenario>``)
#: naming its provider, model and local server: the parent runs ``run_batch`` on the block's provider
#: (provider-neutral requests), is retried when the batch fails or expires, and writes the chain's
#: results joined by custom id where the test reads them.
PROVIDER_MODELS = {"anthropic": "claude-sonnet-4-5", "gemini": "gemini-2.5-flash"}
PROVIDER_SCENARIOS = {  # scenario: (requests, the local server's faults)
    "failures": (20, {"fail_requests": 0.3, "seed": 4, "request_latency": 0.01}),
    "expiring": (12, {"concurrency": 1, "request_latency": 0.25, "expire_after": 1.2}),
    "kill": (400, {"concurrency": 1, "request_latency": 1.0}),
}
PROVIDER_FLOW = textwrap.dedent('''
    import json

    from prefect import flow

    from batch_ops.prefect import OpenAIBatchCredentials, read_batch_results, run_batch


    @flow(name="provider-parent", retries=6, retry_delay_seconds=0)
    async def provider_parent(block: str, tag: str, n: int, out: str, fail_on_request_failures: bool = False) -> None:
        credentials = await OpenAIBatchCredentials.load(block)
        requests = [{"custom_id": f"{tag}-{i}", "max_tokens": 16,
                     "messages": [{"role": "user", "content": f"{tag} {i}"}]} for i in range(n)]
        done = await run_batch(requests=requests, credentials=credentials, poll_interval=0.2,
                               fail_on_request_failures=fail_on_request_failures)
        records = await read_batch_results(done, credentials=credentials)
        with open(out, "w") as f:
            json.dump({"batch_ids": done.batch_ids,
                       "joined": {r["custom_id"]: [r["ok"], r["text"]] for r in records}}, f)


    if __name__ == "__main__":
        provider_parent.serve(name="providers")
''')
SAVE_BLOCKS = textwrap.dedent('''
    import asyncio
    import json
    import sys

    from batch_ops.prefect import OpenAIBatchCredentials


    async def main() -> None:
        for name, fields in json.loads(sys.argv[1]).items():
            await OpenAIBatchCredentials(**fields).save(name, overwrite=True)


    asyncio.run(main())
''')


def provider_blocks(urls: dict[str, dict[str, str]], ledger: Path) -> dict[str, dict[str, Any]]:
    """The credentials blocks, ``e2e-<provider>-<scenario>``: provider, model, key and server only."""
    blocks = {}
    for provider, scenarios in urls.items():
        for scenario, url in scenarios.items():
            blocks[f"e2e-{provider}-{scenario}"] = {
                "provider": provider, "model": PROVIDER_MODELS[provider], "api_key": f"{provider}-e2e-key",
                "base_url": url.removesuffix("/v1") + "/v1beta" if provider == "gemini" else url,
                **({"key_ledger": str(ledger)} if provider == "anthropic" else {})}
    return blocks


def write_requests(path: Path, requests: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps({"method": "POST", "url": ENDPOINT, **r}) + "\n" for r in requests))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


#: Seconds a serving process may take to register its deployment. ~20 s alone; 60 s was once not
#: enough with the whole suite running on 2 cores (the process had printed nothing yet).
SERVE_STARTUP = 150.0

class Proc:
    """A process we started, leading a process group of its own, logging to a file."""

    def __init__(self, argv: list[str], *, env: Mapping[str, str], log: Path, cwd: Path | None = None) -> None:
        self.log = log
        with log.open("ab") as out:
            self.popen = subprocess.Popen(argv, env=dict(env), cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace").replace("\x00", "")[-chars:]

    def signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)


def stop_all(procs: list[Proc], grace: float = 3.0) -> None:
    """SIGTERM to each group, SIGKILL to what is left after ``grace`` seconds (flow-run children too)."""
    for proc in procs:
        proc.signal_group(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(max(0.1, deadline - time.monotonic()))
        proc.signal_group(signal.SIGKILL)  # the leader may be gone while its children live on
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(5)


@dataclass(repr=False)
class Stack:
    """The module's Prefect server, the processes serving and working for it, and a REST client."""

    api: httpx.Client
    env: dict[str, str]
    batch_url: str
    secret: str
    work: Path
    pool: str
    webhook_batch_url: str = ""
    provider_urls: dict[str, dict[str, str]] = field(default_factory=dict)
    structured_batch_url: str = ""
    structured_budget_url: str = ""
    procs: dict[str, Proc] = field(default_factory=dict)
    runs: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def start(self, name: str, argv: list[str], *, env: Mapping[str, str] | None = None,
              cwd: Path | None = None) -> Proc:
        self.procs[name] = Proc(argv, env={**self.env, **(env or {})}, log=self.work / f"{name}.log", cwd=cwd)
        return self.procs[name]

    def logs(self) -> str:
        return "\n".join(f"--- {name} ---\n{proc.tail()}" for name, proc in self.procs.items())

    @contextlib.contextmanager
    def trying(self, *names: str) -> Iterator[None]:
        """Starting these runs failed: keep why, for their tests."""
        try:
            yield
        except Exception as exc:
            for name in names:
                self.errors[name] = f"{type(exc).__name__}: {exc}"

    def run_id(self, name: str) -> str:
        if name not in self.runs:
            pytest.fail(f"the {name} run was not started: {self.errors.get(name)}")
        return self.runs[name]

    def call(self, method: str, url: str, *, idempotent: bool = False, **kwargs: Any) -> httpx.Response:
        """One API call, again while the server is busy (503: its SQLite database is locked), as
        Prefect's own client does; again after a transport error too when the call is safe to repeat
        (a read, or ``idempotent``: a create with an idempotency key)."""
        for attempt in range(30):
            try:
                answer = self.api.request(method, url, **kwargs)
            except httpx.TransportError:  # reads timed out (30 s) with the server's SQLite busy
                safe = idempotent or method == "GET" or url.endswith("/filter")  # POST .../filter only reads
                if not safe or attempt == 29:
                    raise
            else:
                if answer.status_code not in (429, 502, 503) or attempt == 29:
                    return answer
            time.sleep(min(0.05 * 2 ** attempt, 1.0))
        raise AssertionError("unreachable")

    def run_deployment(self, flow_name: str, name: str, parameters: dict[str, Any], *, proc: Proc,
                       timeout: float = SERVE_STARTUP) -> str:
        """A flow run of the deployment, once ``proc`` (serving it) has registered it."""
        deadline = time.monotonic() + timeout
        while (found := self.call("GET", f"/deployments/name/{flow_name}/{name}")).status_code != 200:
            assert proc.alive(), f"the process serving {flow_name}/{name} exited:\n{proc.tail()}"
            assert time.monotonic() < deadline, f"no deployment {flow_name}/{name} after {timeout} s:\n{proc.tail()}"
            time.sleep(0.2)
        # With an idempotency key, a create whose answer timed out can be sent again: Prefect answers
        # with the run it made. (Without, a full run under load failed its stack on a 30 s timeout.)
        key = f"test-{flow_name}-{name}-{time.time_ns()}"  # once: every resend carries the same
        made = self.call("POST", f"/deployments/{found.json()['id']}/create_flow_run", idempotent=True,
                         json={"parameters": parameters, "idempotency_key": key})
        made.raise_for_status()
        return str(made.json()["id"])

    def deployment_id(self, flow_name: str, name: str, *, proc: Proc, timeout: float = SERVE_STARTUP) -> str:
        """The deployment's id, once ``proc`` (serving it) has registered it."""
        deadline = time.monotonic() + timeout
        while (found := self.call("GET", f"/deployments/name/{flow_name}/{name}")).status_code != 200:
            assert proc.alive(), f"the process serving {flow_name}/{name} exited:\n{proc.tail()}"
            assert time.monotonic() < deadline, f"no deployment {flow_name}/{name} after {timeout} s:\n{proc.tail()}"
            time.sleep(0.2)
        return str(found.json()["id"])

    def deployment_runs(self, deployment_id: str) -> list[dict[str, Any]]:
        found = self.call("POST", "/flow_runs/filter", json={
            "flow_runs": {"deployment_id": {"any_": [deployment_id]}}, "sort": "EXPECTED_START_TIME_ASC"})
        found.raise_for_status()
        return list(found.json())

    def scheduled_runs(self, deployment_id: str, *, proc: Proc, timeout: float = 20.0) -> list[dict[str, Any]]:
        """The deployment's runs that the server's scheduler service created (``auto_scheduled``), once
        there are any: it runs every second here (PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS)."""
        deadline = time.monotonic() + timeout
        while not (runs := [r for r in self.deployment_runs(deployment_id) if r.get("auto_scheduled")]):
            assert proc.alive(), f"the process serving deployment {deployment_id} exited:\n{proc.tail()}"
            if time.monotonic() > deadline:
                raised = collections.Counter(  # the exceptions in the server's log, most frequent first
                    line for line in self.procs["prefect-server"].tail(1_000_000).splitlines()
                    if re.match(r"[\w.]+(Error|Exception): ", line))
                pytest.fail(f"the scheduler created no run of deployment {deployment_id} in {timeout} s; the "
                            f"server's log says:\n" + "\n".join(f"{n} x {e}" for e, n in raised.most_common(5)))
            time.sleep(0.5)
        return runs

    def final_state(self, flow_run_id: str, *, proc: Proc, timeout: float = 90.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            run = self.call("GET", f"/flow_runs/{flow_run_id}").json()
            state = run.get("state") or {}
            if state.get("type") in FINAL:
                return dict(state)
            assert proc.alive(), f"the process running flow run {flow_run_id} exited:\n{proc.tail()}"
            assert time.monotonic() < deadline, (
                f"flow run {flow_run_id} still {state.get('type')} after {timeout} s:\n{self.logs()}")
            time.sleep(0.25)

    def subflow_runs(self, flow_run_id: str) -> list[dict[str, Any]]:
        found = self.call("POST", "/flow_runs/filter",
                          json={"flow_runs": {"parent_flow_run_id": {"any_": [flow_run_id]}}})
        found.raise_for_status()
        return list(found.json())

    def assert_ran_batch(self, flow_run_id: str, *, proc: Proc, requests: int | None, **metadata: str) -> None:
        """The flow run and its one ``run_batch`` subflow run completed, and so did the subflow's batch
        (every one of its ``requests``; None: however many it had)."""
        state = self.final_state(flow_run_id, proc=proc)
        assert state["type"] == "COMPLETED", (
            f"flow run {flow_run_id} ended {state['type']}: {state.get('message')}\n{self.logs()}")
        subflows = self.subflow_runs(flow_run_id)
        # On a loaded Prefect server the engine's create of a subflow run can time out after the server made it:
        # the engine makes another, and the first stays PENDING, never run (no batch may name it: checked below).
        ran = [s for s in subflows if s["state"]["type"] != "PENDING"]
        assert [s["state"]["type"] for s in ran] == ["COMPLETED"], subflows
        sub_id = str(ran[0]["id"])
        with BatchClient(api_key=self.secret, base_url=self.batch_url) as client:
            every = list(client.batches.iter_all(limit=100))
        batches = [b for b in every if (b.metadata or {}).get("prefect_flow_run_id") == sub_id]
        assert len(batches) == 1, f"batches of subflow run {sub_id}: {batches}"
        named = {(b.metadata or {}).get("prefect_flow_run_id") for b in every}
        assert not {str(s["id"]) for s in subflows if s not in ran} & named, "a PENDING subflow run made a batch"
        batch = batches[0]
        assert batch.status.value == "completed", batch
        counts = batch.request_counts
        assert counts is not None and counts.total > 0 and counts.completed == (requests or counts.total), batch
        assert {k: (batch.metadata or {}).get(k) for k in metadata} == metadata, batch.metadata


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, batch_server: ServerURL, secret: str,
          make_requests: Any, webhook_secret: str) -> Iterator[Stack]:
    """The orchestration stack (see :func:`run_stack`); test_deployments_breadth.py runs the breadth one."""
    with run_stack(tmp_path_factory, batch_server, secret, make_requests, webhook_secret, breadth=False) as s:
        yield s


@contextlib.contextmanager
def run_stack(tmp_path_factory: pytest.TempPathFactory, batch_server: ServerURL, secret: str,
              make_requests: Any, webhook_secret: str, *, breadth: bool) -> Iterator[Stack]:
    """``prefect server start``; then, all at once so that their start-ups overlap, the served flows and
    their runs; the tests wait for the runs. Two stacks, one per module (so that pytest-xdist runs them
    side by side, each Prefect server with half the runs): ``breadth=False`` — a process work pool and
    its worker, ``.serve()`` of the parent flow (and its budgeted twin), the webhook receiver,
    ``python flows/nightly_eval.py``, a served schedule; ``breadth=True`` — the other providers' served
    runs (retries, cancel), structured outputs with repair, ``python flows/eval_matrix.py``."""
    work = tmp_path_factory.mktemp("deployments-breadth" if breadth else "deployments")
    home = work / "prefect_home"
    home.mkdir()
    port = _free_port()
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT", "OPENAI", "BATCH_OPS", "AIRFLOW"))}
    code = work / "flow_code"
    # The flow's module stands where installed code stands (e.g. an image's site-packages), as a
    # user's does next to a batch_ops from PyPI: Prefect pickles the flow by value and imports
    # batch_ops by name. (This checkout's editable batch_ops would be pickled by value itself.)
    installed = code / "site-packages"
    installed.mkdir(parents=True)
    (installed / "deploy_parent.py").write_text(PARENT_FLOW)
    (installed / "deploy_structured.py").write_text(STRUCTURED_FLOW)
    (code / "bundle_steps.py").write_text(BUNDLE_STEPS)
    served_requests, worker_requests = work / "served.jsonl", work / "worker.jsonl"
    write_requests(served_requests, make_requests(3, prefix="served"))
    write_requests(work / "scheduled.jsonl", make_requests(2, prefix="scheduled"))
    write_requests(worker_requests, make_requests(4, prefix="worker"))
    write_requests(work / "structured.jsonl", make_requests(20, prefix="structured"))
    # Output dominates the price and each request's limit is the valid answer's 15 tokens: attempt 0's bill is
    # close to its upper bound, and a budget just above that bound has no room for a repair round.
    write_requests(work / "structured-budget.jsonl", [
        {"custom_id": f"sb-{i}", "body": {"model": "gpt-4o-mini", "max_tokens": STRUCTURED_ANSWER_TOKENS,
                                          "messages": [{"role": "user", "content": f"City {i}?"}]}}
        for i in range(20)])
    env = {
        **keep,
        "PATH": f"{BIN}{os.pathsep}{keep.get('PATH', '')}",
        "PYTHONPATH": os.pathsep.join(p for p in (str(code), str(installed), keep.get("PYTHONPATH")) if p),
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        # SQLite's busy timeout: a write waits this long for the lock (Prefect's 10 s default fails a
        # flow run with "database is locked" when the machine is busy with other work).
        "PREFECT_API_DATABASE_TIMEOUT": "60",
        "PREFECT_LOCAL_STORAGE_PATH": str(home / "storage"),
        "PREFECT_SERVER_MEMO_STORE_PATH": str(home / "memo_store.toml"),
        "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",  # .serve() looks for runs every second, not every 10
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "1",  # the scheduler service: every second, not 60
        "OPENAI_API_KEY": secret,
        "OPENAI_BASE_URL": str(batch_server),
    }
    api = httpx.Client(base_url=env["PREFECT_API_URL"], timeout=60)
    s = Stack(api=api, env=env, batch_url=str(batch_server), secret=secret, work=work,
              pool="batch-ops-process-pool")
    servers = contextlib.ExitStack()
    try:
        server = s.start("prefect-server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                                            "--port", str(port), "--no-ui"])
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if api.get("/health").status_code == 200:
                    break
            assert server.alive(), f"prefect server start exited:\n{server.tail()}"
            assert time.monotonic() < deadline, f"prefect server not healthy after 120 s:\n{server.tail()}"
            time.sleep(0.25)

        if not breadth:
            from prefect.workers.process import ProcessWorker

            def step(mode: str) -> dict[str, Any]:
                return {"bundle_steps": {"launcher": [sys.executable], "dir": str(work / "bundles"), "mode": mode}}

            s.call("POST", "/work_pools/", json={
                "name": s.pool, "type": "process",
                "base_job_template": ProcessWorker.get_default_base_job_template(),
                "storage_configuration": {"bundle_upload_step": step("upload"),
                                          "bundle_execution_step": step("execute")},
            }).raise_for_status()
            s.start("worker", [str(BIN / "prefect"), "worker", "start", "--pool", s.pool, "--type", "process"])
            submitted = work / "submitted.json"
            deploy = s.start("deploy-and-submit", [sys.executable, "-c", DEPLOY_AND_SUBMIT, str(installed), s.pool,
                                                   str(worker_requests), str(submitted)])
            # Event-driven: a Batch API server sending webhooks to `batch-ops webhooks serve --prefect`.
            receiver_port = _free_port()
            webhook_batch = servers.enter_context(serve_in_background(
                api_key=secret, request_latency=0.05, webhook_urls=[f"http://127.0.0.1:{receiver_port}/openai"],
                webhook_secret=webhook_secret))
            s.webhook_batch_url = str(webhook_batch)
            on_event_env = {"OPENAI_BASE_URL": s.webhook_batch_url, "OPENAI_WEBHOOK_SECRET": webhook_secret}
            s.start("receiver", [str(BIN / "batch-ops"), "webhooks", "serve", "--port", str(receiver_port),
                                 "--prefect"], env=on_event_env)
            (code / "serve_on_event.py").write_text(SERVE_ON_EVENT)
            s.start("serve-on-event", [sys.executable, str(code / "serve_on_event.py")], cwd=work, env=on_event_env)
            serve_parent = s.start("serve-parent", [sys.executable, str(installed / "deploy_parent.py")], cwd=work)
            s.start("serve-scheduled", [sys.executable, "-c", SERVE_SCHEDULED, str(work / "scheduled.jsonl")],
                    cwd=work)
            serve_nightly = s.start("serve-nightly-eval", [sys.executable, str(NIGHTLY_EVAL)], cwd=work, env={
                "BATCH_OPS_EVAL_DIR": str(work / "eval"),
                "BATCH_OPS_EVAL_POLL_INTERVAL": "0.2",
                "BATCH_OPS_EVAL_CRON": "0 0 1 1 *",  # no scheduled run can start during the test
            })
        else:
            # The other providers: a server per provider and scenario, a saved block each, one served parent.
            s.provider_urls = {provider: {scenario: str(servers.enter_context(serve_in_background(**faults)))
                                          for scenario, (_, faults) in PROVIDER_SCENARIOS.items()}
                               for provider in PROVIDER_MODELS}
            (installed / "provider_parent.py").write_text(PROVIDER_FLOW)
            serve_providers = s.start("serve-providers", [sys.executable, str(installed / "provider_parent.py")],
                                      cwd=work)
            save_blocks = s.start("save-blocks", [sys.executable, "-c", SAVE_BLOCKS, json.dumps(
                provider_blocks(s.provider_urls, work / "ledger"))])
            # Structured outputs: a Batch API server that spoils a fifth of the structured answers.
            s.structured_batch_url = str(servers.enter_context(serve_in_background(
                api_key=secret, request_latency=0.01, invalid_share=0.2, invalid_kind="mixed", seed=5)))
            serve_structured = s.start("serve-structured", [sys.executable, str(installed / "deploy_structured.py")],
                                       cwd=work, env={"OPENAI_BASE_URL": s.structured_batch_url})
            # Half the answers spoiled, on a server of its own, for a run whose budget cannot pay a repair round.
            s.structured_budget_url = str(servers.enter_context(serve_in_background(
                api_key=secret, request_latency=0.01, invalid_share=0.5, invalid_kind="mixed", seed=11)))
            # The eval matrix example, served as users serve it, against a server replaying three models and a
            # judge.
            from batch_ops.evals.matrix import MATRIX_RUN

            matrix_batch = servers.enter_context(serve_in_background(
                api_key=secret, engine="replay", replay_files=(str(MATRIX_RUN),)))
            serve_matrix = s.start("serve-eval-matrix", [sys.executable, str(EVAL_MATRIX)], cwd=work, env={
                "OPENAI_BASE_URL": str(matrix_batch),
                "BATCH_OPS_EVAL_DIR": str(work / "matrix-eval"),
                "BATCH_OPS_EVAL_POLL_INTERVAL": "0.2",
                "BATCH_OPS_EVAL_CRON": "0 0 1 1 *",  # no scheduled run can start during the test
            })
        if not breadth:
            # One run of each; a path that cannot start its run fails its own test only.
            with s.trying("served"):
                s.runs["served"] = s.run_deployment("deploy-parent", "served", {"input_path": str(served_requests),
                                                                                "tag": "served"}, proc=serve_parent)
            # The cost issue (25): one run refused by its budget before any upload, one billed.
            for tag, budget in (("budget-refused", 1e-9), ("budget-billed", 100.0)):
                path = work / f"{tag}.jsonl"
                write_requests(path, make_requests(3, prefix=tag))
                with s.trying(tag):
                    s.runs[tag] = s.run_deployment("deploy-budgeted", "budgeted", {
                        "input_path": str(path), "tag": tag, "max_cost_usd": budget,
                        "prices": {"gpt-4o-mini": {"input": 1, "output": 2}}}, proc=serve_parent)
            with s.trying("nightly"):
                s.runs["nightly"] = s.run_deployment("nightly-eval", "nightly-eval", {}, proc=serve_nightly)
            with s.trying("worker-deployment", "worker-bundle"):
                with contextlib.suppress(subprocess.TimeoutExpired):
                    deploy.popen.wait(120)
                assert deploy.popen.returncode == 0, f"deploy and submit failed:\n{deploy.tail()}"
                ids = json.loads(submitted.read_text())
                s.runs["worker-deployment"], s.runs["worker-bundle"] = ids["deployment"], ids["bundle"]
        else:
            provider_runs = [f"{p}-{scenario}" for p in PROVIDER_MODELS for scenario in PROVIDER_SCENARIOS]
            with s.trying(*provider_runs):
                assert save_blocks.popen.wait(120) == 0, f"saving the blocks failed:\n{save_blocks.tail()}"
                for provider in PROVIDER_MODELS:
                    for scenario, (n, _) in PROVIDER_SCENARIOS.items():
                        name = f"{provider}-{scenario}"
                        s.runs[name] = s.run_deployment("provider-parent", "providers", {
                            "block": f"e2e-{name}", "tag": scenario[:2], "n": n, "out": str(work / f"{name}.json"),
                            "fail_on_request_failures": scenario == "failures"}, proc=serve_providers)
            with s.trying("structured"):
                s.runs["structured"] = s.run_deployment("deploy-structured", "structured", {
                    "input_path": str(work / "structured.jsonl")}, proc=serve_structured)
            with s.trying("structured-budget"):
                s.runs["structured-budget"] = s.run_deployment("deploy-structured", "structured", {
                    "input_path": str(work / "structured-budget.jsonl"), "base_url": s.structured_budget_url,
                    "max_cost_usd": STRUCTURED_TIGHT_BUDGET, "prices": STRUCTURED_PRICES,
                    "out": str(work / "structured-budget.json")}, proc=serve_structured)
            with s.trying("matrix"):
                s.runs["matrix"] = s.run_deployment("eval-matrix", "eval-matrix", {}, proc=serve_matrix)
        yield s
    finally:
        stop_all(list(reversed(s.procs.values())))
        servers.close()
        api.close()


def test_a_deployment_trigger_runs_a_served_flow_when_a_tagged_batch_completes(stack: Stack,
                                                                              make_requests: Any) -> None:
    """OpenAI's webhook, as users wire it: the receiver (``--prefect``) emits
    ``batch_ops.batch.completed`` with the batch's metadata as labels; the deployment's trigger
    matches pipeline "on-event" only and starts one run, with the batch's output file id from the
    event; the served process runs it. Nothing polls the batch."""
    proc = stack.procs["serve-on-event"]
    deployment = stack.deployment_id("score-on-event", "on-event", proc=proc)
    time.sleep(2)  # the server's triggers service loads the new automation
    with BatchClient(api_key=stack.secret, base_url=stack.webhook_batch_url) as client:
        other = client.submit(make_requests(1, prefix="other"), endpoint=ENDPOINT, metadata={"pipeline": "other"})
        tagged = client.submit(make_requests(3, prefix="on-event"), endpoint=ENDPOINT,
                               metadata={"pipeline": "on-event"})
    # Seconds when the machine is quiet; a loaded full run has seen Prefect's SQLite locked for long spells.
    deadline = time.monotonic() + 120
    while not (runs := stack.deployment_runs(deployment)):
        assert proc.alive(), proc.tail()
        assert time.monotonic() < deadline, f"no run of the triggered deployment in 120 s:\n{stack.logs()}"
        time.sleep(0.25)
    state = stack.final_state(str(runs[0]["id"]), proc=proc)
    assert state["type"] == "COMPLETED", f"{state.get('message')}\n{stack.logs()}"
    time.sleep(2)  # a duplicate event, or one for the other pipeline, would have started a run by now
    assert len(stack.deployment_runs(deployment)) == 1, other.id
    calls = httpx.get(stack.webhook_batch_url.removesuffix("/v1") + "/healthz").json()["calls"]
    assert calls.get("GET /v1/batches/{id}", 0) == 2, calls  # the receiver's one retrieve per batch
    with BatchClient(api_key=stack.secret, base_url=stack.webhook_batch_url) as client:
        done = client.batches.retrieve(tagged.id)
    assert runs[0]["parameters"] == {"batch_id": tagged.id, "output_file_id": done.output_file_id}


def test_public_flows_validate_their_parameters_after_pickling(tmp_path: Path, make_requests: Any) -> None:
    """What the runner and the worker do to a flow, in this process: pickle by value, then validate."""
    from prefect import Flow
    from prefect.exceptions import ParameterTypeError

    import batch_ops.prefect
    from batch_ops.jobs import JobConfig
    from batch_ops.prefect import run_batch, run_batch_job

    spec = importlib.util.spec_from_file_location("nightly_eval_pickled", NIGHTLY_EVAL)
    assert spec is not None and spec.loader is not None
    nightly = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nightly)  # not in sys.modules: cloudpickle pickles it by value, as for __main__
    cases: list[tuple[Any, dict[str, Any], dict[str, Any]]] = [
        (run_batch, {"input_path": tmp_path / "in.jsonl", "endpoint": ENDPOINT}, {"input_path": tmp_path / "in.jsonl"}),
        (run_batch, {"requests": make_requests(1), "endpoint": ENDPOINT, "fail_on": []}, {"fail_on": []}),
        (run_batch_job, {"input_path": "in.jsonl", "output_path": "out.jsonl", "config": {"endpoint": ENDPOINT}},
         {"config": JobConfig(endpoint=ENDPOINT)}),
        (nightly.nightly_eval, {"max_drop": "0.1"}, {"max_drop": 0.1}),
    ]
    for flow, params, expected in cases:
        unpickled = cloudpickle.loads(cloudpickle.dumps(flow))
        validated = unpickled.validate_parameters(params)
        assert {k: validated[k] for k in expected} == expected, flow.name
    # Every public flow: its validation model is complete after pickling (a missing required
    # parameter is then a ParameterTypeError; an unresolvable annotation, a PydanticUserError).
    flows = [obj for name in batch_ops.prefect.__all__ if isinstance(obj := getattr(batch_ops.prefect, name), Flow)]
    assert run_batch in flows and run_batch_job in flows
    for flow in flows:
        with contextlib.suppress(ParameterTypeError):
            cloudpickle.loads(cloudpickle.dumps(flow)).validate_parameters({})


def loads_elsewhere(data: bytes, check: str, tmp_path: Path) -> Any:
    """Unpickle ``data`` in a new Python process, as a bundle is, and return the JSON value of the
    expression ``check`` (of ``obj``, the unpickled object).

    Not in this process: for a class pickled by value, cloudpickle hands back the *original* class
    with its methods replaced by the unpickled copies, whose globals are copies of the module's. A
    later test in the same worker then patched ``batch_ops.client._sleep`` and ``BatchClient`` no
    longer saw it (``test_retry_after_is_honoured`` failed after the pickling test, reproduced).
    """
    path = tmp_path / "pickled.bin"
    path.write_bytes(data)
    code = ("import cloudpickle, json, sys\n"
            "obj = cloudpickle.loads(open(sys.argv[1], 'rb').read())\n"
            f"print(json.dumps({check}))")
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_module_locks_pickle_by_value(tmp_path: Path) -> None:
    """Prefect pickles a local package by value (an editable batch_ops, in a ``submit_to_work_pool``
    bundle), and with each function the module globals it uses: a ``threading.Lock()`` among them
    failed the bundle with ``TypeError: cannot pickle '_thread.lock' object``. Each lock now
    unpickles as a fresh one, and the unpickled functions that take it work."""
    import batch_ops
    from batch_ops import BatchStatus
    from batch_ops.prefect.tasks import settings_used_by

    BatchStatus("queued")  # an unknown status: kept (under the lock) in the module's registry
    cloudpickle.register_pickle_by_value(batch_ops)
    try:
        # BatchStatus's _missing_ takes a module lock; so does settings_used_by.
        data = cloudpickle.dumps((BatchStatus, settings_used_by))
    finally:
        cloudpickle.unregister_pickle_by_value(batch_ops)
    checked = loads_elsewhere(data, '[obj[0]("paused").value, obj[0]("paused").is_terminal, '
                                    'obj[1]("no-such-flow-run")]', tmp_path)
    assert checked == ["paused", False, []]


@pytest.fixture
def live_loop_state(server_url: ServerURL) -> Iterator[None]:
    """What earlier work leaves in a process: a shared async client and an events subscription on a
    loop that never ends (Prefect runs async tasks on a loop thread that lives as long as the
    process). Under the full suite a worker that had run such a test failed the pickling below with
    ``cannot pickle '_asyncio.Task' object``: the client's closer task sat in a module-level set."""
    import asyncio
    import threading

    from batch_ops import AsyncBatchClient, ClientSettings
    from batch_ops.webhooks import EventSubscription

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def use() -> None:
        AsyncBatchClient.shared(ClientSettings(api_key="sk-local", base_url=server_url))
        await EventSubscription.shared("http://127.0.0.1:9/events").sleep("batch_x", 0.01)

    asyncio.run_coroutine_threadsafe(use(), loop).result(10)
    yield

    async def end() -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run_coroutine_threadsafe(end(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def test_flow_using_run_batch_pickles_with_batch_ops_by_value(tmp_path: Path, live_loop_state: None) -> None:
    """What ``submit_to_work_pool`` does with an editable batch_ops: the user's flow module and every
    local module it imports (batch_ops among them) are pickled by value; the bundle must unpickle
    and validate its parameters, whatever live tasks and clients the process holds."""
    import batch_ops

    source = tmp_path / "parent_by_value.py"
    source.write_text(PARENT_FLOW)
    spec = importlib.util.spec_from_file_location("parent_by_value", source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # not in sys.modules: pickled by value, as a bundle's flow is
    cloudpickle.register_pickle_by_value(batch_ops)
    try:
        data = cloudpickle.dumps(module.parent)
    finally:
        cloudpickle.unregister_pickle_by_value(batch_ops)
    validated = loads_elsewhere(data, 'obj.validate_parameters({"input_path": "in.jsonl", "tag": "t"})', tmp_path)
    assert validated == {"input_path": "in.jsonl", "tag": "t"}


def test_served_flow_runs_run_batch_as_a_subflow(stack: Stack) -> None:
    """``parent.serve()`` in its own process; a run of its deployment; ``run_batch`` inside it."""
    stack.assert_ran_batch(stack.run_id("served"), proc=stack.procs["serve-parent"], requests=3, test="served")


#: City's JSON Schema (the served flow's model), to read the answers here.
def test_process_worker_runs_deployment_and_submitted_flow(stack: Stack) -> None:
    """``prefect worker start --type process``: a deployment from source (the flow-run process loads
    it from its entrypoint) and the same flow submitted to the pool (a pickled bundle); both call
    ``run_batch``."""
    worker = stack.procs["worker"]
    stack.assert_ran_batch(stack.run_id("worker-deployment"), proc=worker, requests=4, test="worker-deployment")
    stack.assert_ran_batch(stack.run_id("worker-bundle"), proc=worker, requests=4, test="worker-bundle")


def test_served_nightly_eval_example(stack: Stack) -> None:
    """The user's path: ``python flows/nightly_eval.py`` serves the flow; a run of its deployment
    builds the eval set's requests, runs them as one batch (a ``run_batch`` subflow) and scores them."""
    run = stack.run_id("nightly")
    stack.assert_ran_batch(run, proc=stack.procs["serve-nightly-eval"], requests=None, pipeline="nightly_eval")
    assert list((stack.work / "eval" / "reports").rglob("*.md")), "the run wrote no report"


def test_scheduler_creates_and_runs_scheduled_flow_runs(stack: Stack) -> None:
    """The server's scheduler service creates the runs of served schedules, and they run.

    With SQLAlchemy 2.1 under prefect 3.7.7 every scheduler cycle failed (``InvalidRequestError: Can't
    evaluate bulk DML statement; please supply a bulk_dml decorated function``) and no scheduled run
    was ever created: ``python flows/nightly_eval.py`` (a cron schedule) never ran. Here: the served
    nightly eval's cron deployment gets runs from the scheduler, at the cron's times; and the parent
    flow served with ``interval=5`` (paused until now) gets runs from the scheduler once resumed, the
    first of which runs to COMPLETED with its ``run_batch`` subflow and batch.
    """
    nightly = stack.deployment_id("nightly-eval", "nightly-eval", proc=stack.procs["serve-nightly-eval"])
    runs = stack.scheduled_runs(nightly, proc=stack.procs["serve-nightly-eval"])
    assert {r["state"]["type"] for r in runs} == {"SCHEDULED"}, runs
    # BATCH_OPS_EVAL_CRON is "0 0 1 1 *" (UTC): every run the scheduler made is at midnight on 1 January.
    assert all(r["expected_start_time"][4:19] == "-01-01T00:00:00" for r in runs), runs

    served = stack.procs["serve-scheduled"]
    scheduled = stack.deployment_id("deploy-parent", "scheduled", proc=served)
    assert not stack.deployment_runs(scheduled), "a paused deployment got runs"
    stack.call("POST", f"/deployments/{scheduled}/resume_deployment").raise_for_status()
    try:
        first = stack.scheduled_runs(scheduled, proc=served)[0]
        stack.assert_ran_batch(str(first["id"]), proc=served, requests=2, test="scheduled")
    finally:  # its later runs are of no use here: pausing deletes those not started yet
        stack.call("POST", f"/deployments/{scheduled}/pause_deployment")


def test_served_run_batch_refuses_a_budget_before_upload_and_bills_the_other(stack: Stack) -> None:
    """Issue 25 through a served deployment: ``max_cost_usd`` below the estimate fails the run with
    ``BudgetExceededError`` and nothing of it reaches the Batch API (no batch, no upload holding its
    requests); a run within its budget completes, its artifact showing estimate vs actual."""
    proc = stack.procs["serve-parent"]
    refused = stack.final_state(stack.run_id("budget-refused"), proc=proc)
    assert refused["type"] == "FAILED" and "BudgetExceededError" in str(refused.get("message")), refused
    stack.assert_ran_batch(stack.run_id("budget-billed"), proc=proc, requests=3, test="budget-billed")
    with BatchClient(api_key=stack.secret, base_url=stack.batch_url) as client:
        assert not [b for b in client.batches.iter_all(limit=100)
                    if (b.metadata or {}).get("test") == "budget-refused"]
        uploads = client.files.list(purpose="batch").data
        for f in uploads:
            assert b"budget-refused-" not in httpx.get(f"{stack.batch_url}/files/{f.id}/content", headers={
                "Authorization": f"Bearer {stack.secret}"}).content
    sub = stack.subflow_runs(stack.run_id("budget-billed"))[0]
    found = stack.call("POST", "/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [sub["id"]]},
                                                                        "key": {"any_": ["openai-batch-cost"]}}})
    rows = json.loads(found.json()[0]["data"])
    assert rows[0]["model"] == "gpt-4o-mini" and rows[0]["actual_usd"] > 0, rows
    upper = float(rows[0]["estimate_usd"].split("..")[1])  # the input is a byte bound: the lower end is no floor
    assert rows[0]["actual_usd"] <= upper, rows
