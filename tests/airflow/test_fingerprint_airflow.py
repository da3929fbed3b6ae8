"""An Airflow task instance run again after its input file was fixed (issue 22, item 2).

``dag.test()`` with the same logical date replaces the DAG run under the same run id, as a clear
does: the task instance's idempotency key is the same. The fixed file must get a batch of its
own (the first one left alone); the same requests regenerated must re-attach (no new batch).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from batch_ops.airflow.operators import idempotency_key


def _run(dagbag: Any, logical_date: datetime, conf: dict[str, Any]) -> Any:
    dag = dagbag.get_dag("bo_retry_failed")  # one plain OpenAIBatchOperator reading conf["input_path"]
    return dag.test(run_after=logical_date, logical_date=logical_date, run_conf=conf)


def _deployment() -> str | None:
    """This test Airflow's deployment identity (made by the first operator that ran): part of every key."""
    from airflow.models.variable import Variable as VariableRow
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.query(VariableRow).filter(VariableRow.key == "batch_ops_deployment_id").first()
        return None if row is None else str(row.val)


def _key_batches(client: Any, key: str) -> list[Any]:
    held = [b for b in client.batches.list(limit=100).data
            if (b.metadata or {}).get("batch_ops_idempotency_key", "").startswith(key)]
    return sorted(held, key=lambda b: (b.created_at, b.id))


def test_a_cleared_task_with_a_fixed_input_file_gets_a_new_batch_not_the_stale_one(
    server_url, use_server, dagbag, af, tmp_path: Path, oracle, capfd
) -> None:
    use_server(server_url)
    path = af.write_requests(tmp_path / "requests.jsonl", 4, prefix="typo")
    logical = datetime.now(timezone.utc).replace(microsecond=0)
    first_run = _run(dagbag, logical, {"input_path": str(path)})
    assert af.state(first_run, "batch") == "success"
    stale = af.xcom(first_run, "batch")["batch_id"]

    af.write_requests(path, 4, prefix="fixed")  # the file is fixed, the task cleared and run again
    capfd.readouterr()
    second_run = _run(dagbag, logical, {"input_path": str(path)})
    assert second_run.run_id == first_run.run_id, "the same task instance identity"
    assert af.state(second_run, "batch") == "success"
    result = af.xcom(second_run, "batch")
    assert result["batch_id"] != stale, "the cleared task returned the batch of the old input"
    client = oracle(server_url)
    content = client.files.content(client.batches.retrieve(result["batch_id"]).input_file_id).text
    assert "fixed 0" in content and "typo" not in content
    assert client.batches.retrieve(stale).status == "completed", "the old batch is left alone"
    out = capfd.readouterr().out
    assert "the requests changed" in out and stale in out

    # Regenerated with the same (fixed) requests in another order: re-attached, nothing created.
    lines = path.read_text().splitlines()
    path.write_text("\n".join(json.dumps(json.loads(x), indent=None, separators=(", ", ": "))
                              for x in reversed(lines)) + "\n")
    third_run = _run(dagbag, logical, {"input_path": str(path)})
    assert af.xcom(third_run, "batch")["batch_id"] == result["batch_id"]
    key = idempotency_key(dag_id=first_run.dag_id, task_id="batch", run_id=first_run.run_id, deployment=_deployment())
    assert [b.id for b in _key_batches(client, key)] == [stale, result["batch_id"]]
