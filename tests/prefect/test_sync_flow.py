"""The async tasks from a *sync* flow: Prefect 3 runs them through the task runner (``.submit`` / ``.map``)."""

from __future__ import annotations

from typing import Any

from prefect import flow, unmapped

from batch_ops import BatchStatus
from batch_ops.prefect import BatchResult, OpenAIBatchCredentials, create_batch, upload_batch_file, wait_for_batch

ENDPOINT = "/v1/chat/completions"


def test_the_tasks_work_in_a_sync_flow_through_submit_and_map(batch_server: str, secret: str,
                                                              make_requests: Any) -> None:
    credentials = OpenAIBatchCredentials(api_key=secret, base_url=batch_server)

    @flow
    def sync_flow(sources: list[list[dict[str, Any]]]) -> list[BatchResult]:
        # Prefect 3 runs async tasks from a sync flow through the task runner: .submit / .map.
        file_ids = upload_batch_file.map(sources, endpoint=unmapped(ENDPOINT), credentials=unmapped(credentials))
        created = create_batch.map(file_ids, endpoint=unmapped(ENDPOINT), credentials=unmapped(credentials))
        batch_ids = [c.result().batch_id for c in created]
        return wait_for_batch.map(batch_ids, credentials=unmapped(credentials), poll_interval=unmapped(0.1)).result()

    results = sync_flow([make_requests(2), make_requests(3), make_requests(4)])

    assert [(r.status, r.request_counts.total) for r in results] == [
        (BatchStatus.COMPLETED, 2), (BatchStatus.COMPLETED, 3), (BatchStatus.COMPLETED, 4)]
