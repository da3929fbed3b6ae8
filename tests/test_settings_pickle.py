"""``ClientSettings`` never carries its secrets into a pickle (issue 22, item 7).

Pickles travel and stay: Prefect pickles batch_ops by value into work-pool bundles, persists
task results with cloudpickle, and a distributed task runner ships task arguments to other
machines. A pickled ``ClientSettings`` keeps where and how to call, never the key or the events
token; a client built from the copy fails before any request, saying why and what to do.
"""

from __future__ import annotations

import copy
import pickle

import cloudpickle
import pytest

from batch_ops import BatchClient, ClientSettings
from batch_ops.errors import ConfigurationError
from batch_ops.server import ServerURL

KEY = "sk-settings-CANARY-41d9e07a"
TOKEN = "events-token-CANARY-88c2"


def _settings(url: str = "http://127.0.0.1:9/v1") -> ClientSettings:
    return ClientSettings(api_key=KEY, base_url=url, project="proj", events_url="http://127.0.0.1:9/events",
                          events_token=TOKEN, max_retries=2)


@pytest.mark.parametrize("dumps", [pickle.dumps, cloudpickle.dumps], ids=["pickle", "cloudpickle"])
def test_pickle_keeps_the_endpoint_and_leaves_the_secrets(dumps: object) -> None:
    settings = _settings()
    data = dumps(settings)  # type: ignore[operator]
    assert KEY.encode() not in data and TOKEN.encode() not in data
    copied = pickle.loads(data)
    assert (copied.base_url, copied.project, copied.events_url, copied.max_retries) == (
        settings.base_url, "proj", settings.events_url, 2)
    assert copied.api_key is None and copied.events_token is None


def test_a_client_from_unpickled_settings_says_why_it_has_no_key(server_url: ServerURL) -> None:
    copied = pickle.loads(pickle.dumps(_settings(server_url)))
    with pytest.raises(ConfigurationError, match="unpickled, and batch_ops never puts a key in a pickle"):
        BatchClient(settings=copied)


def test_copies_in_the_process_keep_the_key(server_url: ServerURL) -> None:
    settings = _settings(server_url)
    for twin in (copy.copy(settings), copy.deepcopy(settings), settings.model_copy()):
        assert twin.api_key is not None and twin.api_key.get_secret_value() == KEY
    with BatchClient(settings=copy.deepcopy(settings)) as client:
        assert client.batches.list(limit=1).data is not None  # it still authenticates
