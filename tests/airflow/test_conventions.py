"""Conventions Airflow users expect of a provider: ``deferrable`` follows ``[operators] default_deferrable``
when the deployment sets it, and the connection id is a templated field."""

from __future__ import annotations

import configparser
from typing import Any

import pytest

from batch_ops.airflow import (
    OpenAIBatchJobOperator,
    OpenAIBatchOperator,
    OpenAIBatchOrphanSweepOperator,
    OpenAIBatchSensor,
)

DEFERRING = {
    "operator": lambda **kw: OpenAIBatchOperator(task_id="op", endpoint="/v1/embeddings", input_file_id="f", **kw),
    "job": lambda **kw: OpenAIBatchJobOperator(task_id="job", input_path="in", output_path="out",
                                               endpoint="/v1/embeddings", **kw),
    "sensor": lambda **kw: OpenAIBatchSensor(task_id="sensor", batch_id="b", **kw),
}


@pytest.mark.parametrize("kind", sorted(DEFERRING))
def test_deferrable_follows_default_deferrable_when_the_environment_sets_it(
        kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.configuration import conf

    make = DEFERRING[kind]
    monkeypatch.delenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", raising=False)
    # Airflow ships the option as False; unset by the deployment, ours defer.
    assert conf.getboolean("operators", "default_deferrable") is False
    assert make().deferrable is True
    monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "false")
    assert make().deferrable is False
    assert make(deferrable=True).deferrable is True  # an explicit argument wins
    monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "true")
    assert make().deferrable is True
    monkeypatch.delenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE")
    # airflow.cfg: Airflow writes every option at its default into a new file, `default_deferrable = false`
    # included, so the file is no sign of a choice: the operators still defer (the e2e test runs such a file).
    if not configparser.ConfigParser.has_section(conf, "operators"):
        configparser.ConfigParser.add_section(conf, "operators")
    configparser.ConfigParser.set(conf, "operators", "default_deferrable", "False")
    try:
        assert make().deferrable is True
    finally:
        configparser.ConfigParser.remove_option(conf, "operators", "default_deferrable")


def test_every_operator_templates_its_connection_id() -> None:
    for cls in (OpenAIBatchOperator, OpenAIBatchJobOperator, OpenAIBatchSensor, OpenAIBatchOrphanSweepOperator):
        assert "conn_id" in cls.template_fields, cls.__name__


def test_a_templated_connection_id_is_rendered_before_use(use_server: Any, run_dag: Any, af: Any,
                                                          server_url: str) -> None:
    use_server(server_url)
    dr = run_dag("batch_ops_templated_conn", {"conn_id": "openai_batch_default"})
    assert af.state(dr, "batch") == "success"
    assert af.xcom(dr, "batch")["status"] == "completed"


def test_example_dags_document_themselves_in_markdown(airflow_db: None) -> None:
    """The UI renders ``doc_md`` as Markdown: no reStructuredText roles or double backticks, lists as
    lists; every example DAG has a one-line description too."""
    import re
    from pathlib import Path

    try:
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:  # Airflow < 3.2
        from airflow.models.dagbag import DagBag  # type: ignore[no-redef]

    bag = DagBag(dag_folder=str(Path(__file__).resolve().parents[2] / "dags"))
    assert not bag.import_errors, bag.import_errors
    assert {"nightly_eval", "batch_ops_orphan_sweep"} <= set(bag.dags)
    for dag_id, dag in bag.dags.items():
        doc = dag.doc_md or ""
        assert dag.description and len(dag.description) < 200, dag_id
        assert not re.search(r":(class|func|meth|mod|attr):`|``", doc), f"{dag_id}: reStructuredText in doc_md"
        if "BATCH_OPS_" in doc:  # each setting is a list item, not an indented line that Markdown runs together
            assert re.search(r"^- `BATCH_OPS_[A-Z_]+`", doc, re.M), f"{dag_id}: settings not a list"
            assert not re.search(r"^\s+`?BATCH_OPS_[A-Z_]+`?:", doc, re.M), f"{dag_id}: settings not a list"
