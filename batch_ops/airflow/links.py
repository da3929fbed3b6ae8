"""The operator's extra link: a button on the task that opens the batch.

The URL is computed on the worker the moment the batch exists and stored in XCom under the
link's key, where the Airflow UI reads it (the API server never needs the connection).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from airflow.sdk import BaseOperatorLink

from batch_ops.settings import ClientSettings

__all__ = ["OpenAIBatchLink", "batch_url"]


def batch_url(settings: ClientSettings, batch_id: str) -> str:
    """Where a person can look at the batch.

    Examples:
        >>> batch_url(ClientSettings(api_key="k"), "batch_1")
        'https://platform.openai.com/batches/batch_1'
        >>> batch_url(ClientSettings(api_key="k", base_url="http://127.0.0.1:8765/v1"), "batch_1")
        'http://127.0.0.1:8765/v1/batches/batch_1'
    """
    if urlsplit(settings.base_url).hostname == "api.openai.com":
        return f"https://platform.openai.com/batches/{batch_id}"
    # Other servers (Azure, vLLM gateways, the local server) have no dashboard we know of:
    # link the batch object itself.
    return settings.url(f"/batches/{batch_id}")


class OpenAIBatchLink(BaseOperatorLink):
    """Extra link "OpenAI Batch" on :class:`~batch_ops.airflow.OpenAIBatchOperator` tasks.

    Examples:
        >>> OpenAIBatchLink().xcom_key
        '_link_OpenAIBatchLink'
    """

    name = "OpenAI Batch"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        # Airflow calls this on the worker when the task ends and stores the answer under
        # xcom_key, overwriting what the operator pushed when the batch was created: hand back
        # that URL. No batch (a failure before the create): no link, and no XCom lookup.
        url = getattr(operator, "_batch_url", None)
        if url:
            return str(url)
        if not getattr(operator, "_batch_id", None):
            return ""
        from airflow.sdk.execution_time.xcom import XCom

        value = XCom.get_value(ti_key=ti_key, key=self.xcom_key)
        return value if isinstance(value, str) else ""
