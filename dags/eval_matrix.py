"""
# Eval matrix

Several models on one eval set, each as its own batch and all at once; a judge model grading
every answer as a **second batch**; paired statistics, a regression gate and one HTML report.

1. `plan` reads the eval set (your JSONL/CSV, or the shipped one) and writes each model's
   provider-neutral requests. Bad params or a bad eval set fail here, before anything is paid for.
2. `answer` (`OpenAIBatchOperator`, **mapped: one batch per model**, each through the model's own
   connection) defers to the triggerer until its batch ends, holding no worker slot.
3. `grade` (mapped) grades each model's answers with the deterministic graders and writes the
   judge's requests.
4. `judge_plan` lists every model's judge batches; `judge` (`OpenAIBatchOperator`, mapped: one
   judge batch per model and judge, each through its judge's connection): grading at batch price,
   with its own cost line.
5. `score` (mapped per model) joins the judges' verdicts (several judges: their majority): a judge
   answer without a grade is counted *unparsed*, a failed request *errored*: both apart, never a
   pass or a fail.
6. `report` (`EvalReportOperator`) writes the report (HTML with plots, Markdown, JSON in OpenAI's
   report shape) and each model's history, links it from the task (**Eval report**), then fails
   the run when a model dropped significantly, and by at least `min_drop`, against its previous run.

## Params

- `models`: a list; each a model name (the default connection) or
  `{"model": ..., "connection": <conn id>, "provider": ..., "price": {"input_per_million": ...,
  "output_per_million": ...}}` (`price`: batch prices overriding genai-prices' table, for a model it
  does not know). Every batch's cost estimate (made before its upload) and actual bill come from
  `batch_ops.cost` and show side by side in the report.
- `judge`: `{"model": ..., "connection": ..., "price": ...}` (the pinned judge) — required by this
  DAG; or a list of judges: one judge batch each, the grade their majority.
- `epochs` / `temperature`: answers per item (in the same batch) and their sampling temperature
  (above 0 with several epochs); the report then adds pass@1 and pass@epochs.
- `max_cost_usd`: the run's budget in USD at batch prices (empty: none). `plan` refuses the run
  before any upload when the answers' upper bounds pass it; each batch gets its share
  (`batch_ops.evals.matrix.batch_budgets`) and the core refuses a batch that could pass its share.
- `baseline`: the model the others are compared with (default: the first).
- `min_drop`: the smallest drop (a share: 0.02 = 2 points) the gate fails on, when significant.
- `eval_set`: a JSONL or CSV file (path or `s3://…` URL); empty: the shipped 210-item set.
- `template`: the user message template (`{input}`, `{category}`, metadata keys); empty: the input.

Defaults: `BATCH_OPS_EVAL_MATRIX` (JSON of the params above) when set; else the offline demo
matrix (three replayed models and a judge on the local server, `batch-ops serve --engine replay
--replay-file batch_ops/evals/data/matrix_run.jsonl`).

## Configuration

- Each model's connection (`openaibatch`): host = base URL, password = key, *Provider* and
  *Model* as in docs/providers.md. The default connection is `openai_batch_default`.
- `BATCH_OPS_EVAL_STORAGE` / `BATCH_OPS_EVAL_DIR` / `BATCH_OPS_EVAL_STORAGE_CONN_ID`: where the
  report and the history go (`<storage>/matrix`), as for `nightly_eval`; object storage when
  workers share no disk.
- `BATCH_OPS_EVAL_REPORT_URL`: when the report folder is served over HTTP, its URL (the task's
  link then opens the page there; else it is a `file://` or storage URL).
- `BATCH_OPS_EVAL_POLL_INTERVAL`: seconds between status polls (default 60).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import ObjectStoragePath, Param, dag, task

from batch_ops import storage
from batch_ops.airflow import EvalReportOperator, OpenAIBatchHook, OpenAIBatchOperator
from batch_ops.evals.matrix import (
    DEMO_MATRIX,
    MatrixConfig,
    answer_estimate,
    answer_requests,
    batch_budgets,
    grade_answers,
    model_record,
    with_times,
)

_LOCAL_DEFAULT = Path(os.environ.get("AIRFLOW_HOME", Path.home() / "airflow")) / "eval_runs"
STORAGE = os.environ.get("BATCH_OPS_EVAL_STORAGE") or str(
    Path(os.environ.get("BATCH_OPS_EVAL_DIR") or _LOCAL_DEFAULT).resolve())
STORAGE_CONN_ID = os.environ.get("BATCH_OPS_EVAL_STORAGE_CONN_ID") or None
POLL_INTERVAL = float(os.environ.get("BATCH_OPS_EVAL_POLL_INTERVAL", "60"))
REPORT_URL = os.environ.get("BATCH_OPS_EVAL_REPORT_URL") or None
DEFAULTS: dict[str, Any] = json.loads(os.environ["BATCH_OPS_EVAL_MATRIX"]) if os.environ.get(
    "BATCH_OPS_EVAL_MATRIX") else DEMO_MATRIX


def _reports() -> Any:
    url = storage.join(STORAGE, "matrix")
    if STORAGE_CONN_ID and storage.is_url(str(url)):
        return ObjectStoragePath(str(url), conn_id=STORAGE_CONN_ID)
    return url


def _conn(connection: str | None) -> str:
    return connection or OpenAIBatchHook.default_conn_name


def _timed(hook: OpenAIBatchHook, outcome: dict[str, Any]) -> dict[str, Any]:
    """The outcome with its batches' creation and end times (the record's turnaround)."""
    with hook.get_client() as client:
        return with_times(outcome, [client.batches.retrieve(i) for i in outcome.get("batch_ids") or
                                    [outcome["batch_id"]]])


_OPERATOR_KWARGS = ("conn_id", "requests", "metadata", "prices", "max_cost_usd")


def _batch_kwargs(planned: dict[str, Any]) -> dict[str, Any]:
    """What the batch operator takes of a planned batch (the rest: for the steps after it)."""
    return {k: planned[k] for k in _OPERATOR_KWARGS}


@dag(
    dag_id="eval_matrix",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,  # one run at a time per history
    tags=["batch_ops", "eval"],
    params={
        "models": Param(DEFAULTS["models"], type="array", description="model names or {model, connection, "
                        "provider, price} objects"),
        "judge": Param(DEFAULTS.get("judge"), type=["object", "string", "array"],
                       description="{model, connection, price, template, criterion}, or a list of judges (the first's "
                       "grading settings apply; the grade is their majority)"),
        "epochs": Param(DEFAULTS.get("epochs", 1), type="integer", minimum=1, maximum=100,
                        description="answers per item (pass@k in the report); more than 1 needs a temperature"),
        "temperature": Param(DEFAULTS.get("temperature"), type=["null", "number"], minimum=0, maximum=2),
        "max_cost_usd": Param(DEFAULTS.get("max_cost_usd"), type=["null", "number"], minimum=0,
                              description="the run's budget in USD (batch prices): every batch refused before upload "
                              "when it could pass its share"),
        "baseline": Param(DEFAULTS.get("baseline"), type=["null", "string"]),
        "min_drop": Param(DEFAULTS.get("min_drop", 0.02), type="number", minimum=0, maximum=1),
        "eval_set": Param(DEFAULTS.get("eval_set"), type=["null", "string"]),
        "template": Param(DEFAULTS.get("template"), type=["null", "string"]),
    },
    description="Eval matrix: one deferred batch per model, a judge batch per model, statistics, gate and an HTML "
    "report",
    doc_md=__doc__,
)
def eval_matrix() -> None:
    @task
    def plan(params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        config = MatrixConfig.from_params(params or {})
        if config.judge is None:
            raise ValueError("the eval_matrix DAG grades with a judge: set the judge param ({model, connection})")
        config.check()  # the eval set and the graders, before any batch is paid for
        requests = {spec.model: answer_requests(config, spec) for spec in config.models}
        budgets: dict[str, Any] = {"answers": {}, "judge": None}
        if config.max_cost_usd is not None:  # the run's budget: refused here, before any upload, when it cannot hold
            provider = {s.model: str(OpenAIBatchHook(conn_id=_conn(s.connection)).get_settings().dialect.name)
                        for s in config.models}
            budgets = batch_budgets(config, {m: answer_estimate(config, r, provider=provider[m])
                                             for m, r in requests.items()})
        return [{"conn_id": _conn(spec.connection), "requests": requests[spec.model], "prices": config.prices(),
                 "max_cost_usd": budgets["answers"].get(spec.model), "judge_max_cost_usd": budgets["judge"],
                 "metadata": {"eval": "matrix", "stage": "answers", "model": spec.model[:64]}}
                for spec in config.models]

    planned = plan()
    answers = OpenAIBatchOperator.partial(
        task_id="answer", poll_interval=POLL_INTERVAL, timeout=pendulum.duration(hours=26), retries=2,
    ).expand_kwargs(planned.map(_batch_kwargs))

    @task
    def grade(pair: Any, params: dict[str, Any] | None = None) -> dict[str, Any]:
        planned_one, outcome = pair
        config = MatrixConfig.from_params(params or {})
        spec = next(m for m in config.models if m.model[:64] == planned_one["metadata"]["model"])
        hook = OpenAIBatchHook(conn_id=planned_one["conn_id"])
        graded = grade_answers(config, spec, hook.get_results(outcome, raw=False), _timed(hook, outcome))
        # one judge batch per judge model, through its own connection, with its share of the run's budget
        graded["judge_batches"] = [
            {"conn_id": _conn(j["connection"]), "requests": j["requests"], "prices": config.prices(),
             "max_cost_usd": planned_one["judge_max_cost_usd"],
             "metadata": {"eval": "matrix", "stage": "judge", "model": spec.model[:64], "judge": j["judge"][:64]}}
            for j in graded["judge_batches"]]
        return graded

    graded = grade.expand(pair=planned.zip(answers.output))

    @task
    def judge_plan(graded_all: Any) -> list[dict[str, Any]]:
        """Every model's judge batches, one list: the judge stage is mapped over (model, judge) pairs."""
        return [b for g in graded_all for b in g["judge_batches"]]

    judge_batches = judge_plan(graded)
    judged = OpenAIBatchOperator.partial(
        task_id="judge", poll_interval=POLL_INTERVAL, timeout=pendulum.duration(hours=26), retries=2,
    ).expand_kwargs(judge_batches)

    @task
    def score(graded_one: dict[str, Any], judge_batches: Any, judged: Any,
              params: dict[str, Any] | None = None) -> dict[str, Any]:
        config = MatrixConfig.from_params(params or {})
        spec = next(m for m in config.models if m.model == graded_one["model"])
        records: list[dict[str, Any]] = []
        outcomes = []
        for planned_judge, outcome in zip(judge_batches, judged, strict=True):
            if planned_judge["metadata"]["model"] != spec.model[:64]:
                continue  # another model's judge batch
            hook = OpenAIBatchHook(conn_id=planned_judge["conn_id"])
            records += hook.get_results(outcome, raw=False)
            outcomes.append(_timed(hook, outcome))
        provider = OpenAIBatchHook(conn_id=_conn(spec.connection)).get_settings().dialect.name
        spec = spec.model_copy(update={"provider": spec.provider or str(provider)})
        return model_record(config, spec, graded_one, records, outcomes).model_dump(mode="json")

    scored = score.partial(judge_batches=judge_batches, judged=judged.output).expand(graded_one=graded)
    EvalReportOperator(task_id="report", models=scored, report_dir=_reports(), report_base_url=REPORT_URL)


eval_matrix()
