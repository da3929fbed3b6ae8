"""No API key inside a pickle (issue 22, item 7).

Prefect pickles a flow with cloudpickle and, for a local (e.g. editable) package such as
batch_ops, pickles the package *by value*: every module global that the pickled functions use
goes along into the work-pool bundle. After a task had run in a process, ``submit_batch`` pickled
that way carried the API key: ``_RUN_SETTINGS`` (the settings each flow run used, kept for its
``on_cancellation`` hook) was a plain module dict of ``ClientSettings``.

Here the tasks run for real in this process with a canary key (a real Prefect run against a
real local Batch API server), then the task functions, and every batch_ops module with all its
globals, are pickled by value: the canary must be in none of the bytes, and the pickled tasks
must still unpickle and run their bookkeeping in a fresh process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from prefect import flow

from batch_ops.prefect import (
    OpenAIBatchCredentials,
    cancel_batch,
    create_batch,
    submit_batch,
    upload_batch_file,
    wait_for_batch,
)
from batch_ops.server import serve_in_background

from .conftest import ENDPOINT, chat_requests

pytestmark = pytest.mark.asyncio(loop_scope="session")

#: The key of this test only: a scan for it cannot match anything else.
CANARY = "sk-pickle-CANARY-7c1e93ab52d0"


def _loads_elsewhere(data: bytes, check: str, tmp_path: Path) -> Any:
    """Unpickle ``data`` in a new Python process (as a work-pool worker does) and return the JSON
    value of ``check``, an expression of ``obj``."""
    path = tmp_path / "bundle.bin"
    path.write_bytes(data)
    code = ("import cloudpickle, json, sys\n"
            "obj = cloudpickle.loads(open(sys.argv[1], 'rb').read())\n"
            f"print(json.dumps({check}))")
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _batch_ops_modules() -> dict[str, Any]:
    return {name: module for name, module in sorted(sys.modules.items())
            if (name == "batch_ops" or name.startswith("batch_ops.")) and module is not None}


async def test_no_key_in_bundles_after_tasks_ran(tmp_path: Path) -> None:
    import batch_ops
    from batch_ops.prefect.tasks import settings_used_by

    with serve_in_background(api_key=CANARY, request_latency=0.01) as url:
        credentials = OpenAIBatchCredentials(api_key=CANARY, base_url=url)

        @flow(name="pickle-canary")
        async def run_everything() -> str:
            submitted = await submit_batch(chat_requests(2), endpoint=ENDPOINT, credentials=credentials)
            await wait_for_batch(submitted.batch_id, credentials=credentials, poll_interval=0.05, timeout=60)
            file_id = await upload_batch_file(chat_requests(1), endpoint=ENDPOINT, credentials=credentials)
            await create_batch(file_id, endpoint=ENDPOINT, credentials=credentials,
                               idempotency_key="pickle-canary-create")
            from prefect.context import FlowRunContext

            ctx = FlowRunContext.get()
            assert ctx is not None and ctx.flow_run is not None
            return str(ctx.flow_run.id)

        run_id = await run_everything()
    # The run left its settings (with the key) in this process, for its on_cancellation hook.
    assert [s.api_key.get_secret_value() for s in settings_used_by(run_id) if s.api_key] == [CANARY]

    tasks = (submit_batch, create_batch, upload_batch_file, wait_for_batch, cancel_batch, settings_used_by)
    leaks: list[str] = []
    cloudpickle.register_pickle_by_value(batch_ops)
    try:
        bundle = cloudpickle.dumps(tasks)
        if CANARY.encode() in bundle:
            leaks.append("the task functions")
        # Everything the package can reach: each module by value (its globals, classes and their
        # class attributes), or, where a module as a whole cannot be pickled, each global alone.
        for name, module in _batch_ops_modules().items():
            try:
                data = cloudpickle.dumps(module)
            except Exception:
                for attr, value in vars(module).items():
                    try:
                        data = cloudpickle.dumps(value)
                    except Exception:  # not picklable: it cannot travel in a bundle either
                        continue
                    if CANARY.encode() in data:
                        leaks.append(f"{name}.{attr}")
            else:
                if CANARY.encode() in data:
                    leaks.append(name)
    finally:
        cloudpickle.unregister_pickle_by_value(batch_ops)
    assert not leaks, f"the API key is inside the pickle of: {leaks}"
    # The bundle still works where it lands: the tasks unpickle, and the bookkeeping starts empty there.
    checked = _loads_elsewhere(bundle, f'[obj[0].name, obj[1].name, obj[5]("{run_id}")]', tmp_path)
    assert checked == ["submit_batch", "create_batch", []]
