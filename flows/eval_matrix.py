"""Eval matrix, as a Prefect flow: several models at once, a judge batch each, statistics, gate, HTML report.

The same steps as ``dags/eval_matrix.py``, from the same code in ``batch_ops.evals.matrix``; every
model runs concurrently (``asyncio.gather``), each wait async, holding no thread:

1. ``run_batch`` (a subflow) runs the model's eval-set requests (provider-neutral) through its
   credentials block;
2. ``grade`` grades the answers with the deterministic graders and writes the judge's requests;
3. ``run_batch`` again: the **judge batch**, through the judge's block (grading at batch price);
4. ``score`` joins the judge's verdicts (an answer without a grade: *unparsed*, counted apart);
5. ``report`` writes the HTML report (plots), Markdown, JSON (OpenAI's report shape) and each
   model's history, publishes a markdown artifact (the model x category table) and a link artifact
   to the HTML page, then fails the run when a model dropped significantly (and by at least
   ``min_drop``) against its previous run.

Parameters: ``models`` (names, or ``{"model", "connection": <credentials block name>, "provider",
"price": {"input_per_million", "output_per_million"}}``; ``price`` overrides genai-prices' batch price),
``judge`` (``{"model", "connection", "price"}``, or a list: one judge batch each, concurrently, the grade
their majority), ``baseline``, ``min_drop``, ``eval_set`` (JSONL/CSV path or URL), ``template``,
``epochs`` and ``temperature`` (answers per item, pass@k in the report), ``max_cost_usd`` (the run's
budget: refused before any upload when the answers' upper bounds pass it; each batch carries its
share, which the core checks before its upload). Each batch's estimate (made
before its upload) and actual bill (``batch_ops.cost``) are in the report's cost columns. Left empty, they
come from ``BATCH_OPS_EVAL_MATRIX`` (JSON) or the offline demo matrix (three replayed models and a
judge on the local server: ``batch-ops serve --engine replay --replay-file
batch_ops/evals/data/matrix_run.jsonl``). A model without a block uses the environment
(``OPENAI_API_KEY``, ``OPENAI_BASE_URL``).

Files: the report and the history go under ``BATCH_OPS_EVAL_STORAGE`` (an object storage URL) or
``BATCH_OPS_EVAL_DIR`` (default ``~/batch_ops_eval``), in ``matrix/``. ``BATCH_OPS_EVAL_REPORT_URL``:
that folder's HTTP address, when it is served (the link artifact then opens the page there).

Run once:            python flows/eval_matrix.py --once
Serve on a schedule: python flows/eval_matrix.py          (cron BATCH_OPS_EVAL_CRON, default 0 4 * * *, UTC)
"""

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from batch_ops import AsyncBatchClient, storage
from batch_ops.evals.matrix import (
    DEMO_MATRIX,
    MatrixConfig,
    ModelSpec,
    answer_estimate,
    answer_requests,
    batch_budgets,
    enforce_gate,
    finish_run,
    grade_answers,
    model_record,
    with_times,
)
from batch_ops.evals.render import matrix_header, matrix_rows
from batch_ops.prefect import BatchResult, OpenAIBatchCredentials, read_batch_results, run_batch

STORAGE = os.environ.get("BATCH_OPS_EVAL_STORAGE") or str(
    Path(os.environ.get("BATCH_OPS_EVAL_DIR") or Path.home() / "batch_ops_eval").resolve())
POLL_INTERVAL = float(os.environ.get("BATCH_OPS_EVAL_POLL_INTERVAL", "60"))
CRON = os.environ.get("BATCH_OPS_EVAL_CRON", "0 4 * * *")
REPORT_URL = os.environ.get("BATCH_OPS_EVAL_REPORT_URL") or None
DEFAULTS: dict[str, Any] = json.loads(os.environ["BATCH_OPS_EVAL_MATRIX"]) if os.environ.get(
    "BATCH_OPS_EVAL_MATRIX") else DEMO_MATRIX


def _run_id() -> str:
    return f"{flow_run.get_scheduled_start_time():%Y-%m-%dT%H%M%S}-{str(flow_run.get_id())[:8]}"


async def _credentials(name: str | None) -> OpenAIBatchCredentials | None:
    return await OpenAIBatchCredentials.load(name) if name else None  # type: ignore[misc]


async def _provider(spec: ModelSpec) -> str:
    """The provider a model's block speaks (its request shape and prices); no block: the environment's OpenAI."""
    credentials = await _credentials(spec.connection)
    return str(credentials.get_settings().dialect.name) if credentials is not None else spec.provider or "openai"


async def _timed(result: BatchResult, credentials: OpenAIBatchCredentials | None) -> dict[str, Any]:
    """The batch's summary with its attempts' creation and end times (the record's turnaround)."""
    async with (credentials.get_async_client() if credentials else AsyncBatchClient()) as client:
        batches = [await client.batches.retrieve(i) for i in result.batch_ids or [result.batch_id]]
    return with_times(result.model_dump(mode="json"), batches)


@task(cache_policy=NO_CACHE)
async def grade(config: MatrixConfig, spec: ModelSpec, records: list[dict[str, Any]],
                batch: dict[str, Any]) -> dict[str, Any]:
    """The answers graded (deterministic graders) and the judge's requests, off the event loop."""
    return await asyncio.to_thread(grade_answers, config, spec, records, batch)


@task(cache_policy=NO_CACHE)
async def score(config: MatrixConfig, spec: ModelSpec, graded: dict[str, Any], records: list[dict[str, Any]],
                batch: list[dict[str, Any]]) -> dict[str, Any]:
    """The judges' verdicts joined in: the model's record (JSON)."""
    record = await asyncio.to_thread(model_record, config, spec, graded, records, batch)
    return record.model_dump(mode="json")


async def _judge(config: MatrixConfig, spec: ModelSpec, planned: dict[str, Any], budget: float | None,
                 poll_interval: float) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One judge's batch over one model's answers, through the judge's block: its verdicts and its outcome."""
    credentials = await _credentials(planned["connection"])
    judged = await run_batch(requests=planned["requests"], credentials=credentials, prices=config.prices(),
                             max_cost_usd=budget, poll_interval=poll_interval, artifact_key="eval-matrix-judge",
                             metadata={"eval": "matrix", "stage": "judge", "model": spec.model[:64],
                                       "judge": planned["judge"][:64]})
    return (await read_batch_results(judged, credentials=credentials, raw=False),
            await _timed(judged, credentials))


async def _one_model(config: MatrixConfig, spec: ModelSpec, requests: list[dict[str, Any]],
                     budgets: dict[str, Any], poll_interval: float) -> dict[str, Any]:
    credentials = await _credentials(spec.connection)
    answers = await run_batch(requests=requests, credentials=credentials, prices=config.prices(),
                              max_cost_usd=budgets["answers"].get(spec.model),
                              metadata={"eval": "matrix", "stage": "answers", "model": spec.model[:64]},
                              poll_interval=poll_interval, artifact_key="eval-matrix-answers")
    records = await read_batch_results(answers, credentials=credentials, raw=False)
    graded = await grade(config, spec, records, await _timed(answers, credentials))
    # every judge at once (several: their majority grades), each through its own block
    judged = await asyncio.gather(*(_judge(config, spec, planned, budgets["judge"], poll_interval)
                                    for planned in graded["judge_batches"]))
    if credentials is not None and not spec.provider:
        spec = spec.model_copy(update={"provider": str(credentials.get_settings().dialect.name)})
    verdicts = [r for records_one, _ in judged for r in records_one]
    return await score(config, spec, graded, verdicts, [outcome for _, outcome in judged])


@task(cache_policy=NO_CACHE)
def report(config: MatrixConfig, models: list[dict[str, Any]], run_id: str) -> dict[str, Any]:
    """Record, comparisons, gate and report; the artifacts; then the gate (after the report is written)."""
    run, shown = finish_run(config, models, run_id=run_id, pipeline="prefect",
                            report_dir=storage.join(STORAGE, "matrix"))
    relative = f"runs/{Path(shown['html']).parent.name}/report.html"
    url = (REPORT_URL.rstrip("/") + "/" + relative) if REPORT_URL else (
        Path(shown["html"]).resolve().as_uri() if not storage.is_remote(STORAGE) else shown["html"])
    header, rows = matrix_header(run), matrix_rows(run)
    table = "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                       *["| " + " | ".join(r) + " |" for r in rows]])
    gate = f"**Gate: {run.gate.status}** — {run.gate.reason}" if run.gate else ""
    create_markdown_artifact(key="eval-matrix", markdown=f"# Eval matrix {run.eval_set.name}\n\n{gate}\n\n{table}\n\n"
                             f"[HTML report]({url})\n", description=f"Eval matrix: {len(run.models)} models")
    create_link_artifact(key="eval-matrix-report", link=url, link_text="Eval matrix report (HTML)",
                         description=f"{run.eval_set.name}, run {run.run_id}")
    print("\n".join(" | ".join(r) for r in [header, *rows]))
    print(f"report: {url}")
    enforce_gate(run, shown)
    return {"gate": run.gate.model_dump() if run.gate else None, "report": {**shown, "url": url},
            "complete": run.complete, "models": {m.model: {"mean": m.overall.mean, "ci_low": m.overall.ci_low,
                                                           "ci_high": m.overall.ci_high} for m in run.models}}


@flow(name="eval-matrix", log_prints=True)
async def eval_matrix(models: list[Any] | None = None, judge: Any = None, baseline: str | None = None,
                      min_drop: float | None = None, eval_set: str | None = None, template: str | None = None,
                      max_cost_usd: float | None = None, epochs: int | None = None, temperature: float | None = None,
                      poll_interval: float = POLL_INTERVAL) -> dict[str, Any]:
    """Evaluate every model at once, judge every answer in a second batch, report, and gate on regressions."""
    given = {"models": models, "judge": judge, "baseline": baseline, "min_drop": min_drop, "eval_set": eval_set,
             "template": template, "max_cost_usd": max_cost_usd, "epochs": epochs, "temperature": temperature}
    config = MatrixConfig.from_params({**DEFAULTS, **{k: v for k, v in given.items() if v is not None}})
    if config.judge is None:
        raise ValueError("the eval-matrix flow grades with a judge: give judge={model, connection}")
    await asyncio.to_thread(config.check)  # the eval set and the graders, before any batch is paid for
    run_id = _run_id()
    requests = await asyncio.to_thread(lambda: {spec.model: answer_requests(config, spec) for spec in config.models})
    budgets: dict[str, Any] = {"answers": {}, "judge": None}
    if config.max_cost_usd is not None:  # the run's budget: refused here, before any upload, when it cannot hold
        providers = {s.model: await _provider(s) for s in config.models}
        budgets = await asyncio.to_thread(lambda: batch_budgets(config, {
            m: answer_estimate(config, r, provider=providers[m]) for m, r in requests.items()}))
    records = await asyncio.gather(*(_one_model(config, spec, requests[spec.model], budgets, poll_interval)
                                     for spec in config.models))
    return report(config, list(records), run_id)


if __name__ == "__main__":
    if "--once" in sys.argv:
        asyncio.run(eval_matrix())
    else:
        eval_matrix.serve(name="eval-matrix", cron=CRON)
