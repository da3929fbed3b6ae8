"""Regenerate the recorded answers of the demo model matrix (deterministic; seed 2026).

Writes ``batch_ops/evals/data/matrix_run.jsonl``: a recorded Batch API output file holding the
answers of three "models" to the shipped eval set — ``demo-large`` (right on ~93 %),
``demo-medium`` (~78 %) and ``demo-small`` (~57 %), each weaker on some categories — and the
verdicts of a judge model ``demo-judge`` on each of those answers (closed-QA, ``GRADE: C|I``; it
disagrees with the exact grader now and then, and two of its answers per model carry no grade,
so the report shows *unparsed* counted apart). The local server's replay engine answers each
request from the recording of the model it names (``batch-ops serve --engine replay
--replay-file …``), so one server serves the whole matrix and the scores differ for real.

Usage: ``python scripts/make_matrix_sample.py`` (only needed when changing the set or the models).
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from make_eval_set import answer_text  # noqa: E402  (the shipped set's own wrong-answer maker)

from batch_ops.evals.matrix import judge_prefix  # noqa: E402

OUT = ROOT / "batch_ops" / "evals" / "data" / "matrix_run.jsonl"
JUDGE = "demo-judge"
#: Chance of a right answer per category, per model.
MODELS: dict[str, dict[str, float]] = {
    "demo-large": {"arith": 0.97, "divide": 0.9, "capital": 0.97, "element": 0.95, "units": 0.93, "reverse": 0.85,
                   "prime": 0.93},
    "demo-medium": {"arith": 0.78, "divide": 0.6, "capital": 0.95, "element": 0.9, "units": 0.8, "reverse": 0.55,
                    "prime": 0.85},
    "demo-small": {"arith": 0.45, "divide": 0.3, "capital": 0.85, "element": 0.8, "units": 0.5, "reverse": 0.3,
                   "prime": 0.7},
}
#: How often the judge's verdict differs from the exact grader's, and how many judge answers per model have no grade.
JUDGE_DISAGREES = 0.03
UNPARSED_PER_MODEL = 2


def line(custom_id: str, model: str, content: str, prompt_tokens: int) -> dict[str, Any]:
    digest = hashlib.sha256(f"{model}/{custom_id}".encode()).hexdigest()
    completion = max(1, len(content.split()))
    # Lean lines (the fields a reader needs), so that the recording ships small in the wheel.
    return {"id": f"batch_req_{digest[:16]}", "custom_id": custom_id, "response": {"status_code": 200, "body": {
        "object": "chat.completion", "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                  "total_tokens": prompt_tokens + completion}}}, "error": None}


def main() -> None:
    rng = random.Random(2026)
    items = [json.loads(raw) for raw in (ROOT / "batch_ops" / "evals" / "data" / "nightly_eval.jsonl").open()]
    out: list[dict[str, Any]] = []
    for model, skill in MODELS.items():
        unparsed = set(rng.sample(range(len(items)), UNPARSED_PER_MODEL))
        for n, item in enumerate(items):
            right = rng.random() < skill[item["category"]]
            content = answer_text(item, right, rng)
            out.append(line(item["id"], model, content, 18 + len(item["question"].split())))
            judged_right = right if rng.random() >= JUDGE_DISAGREES else not right
            if n in unparsed:
                verdict = "The submission may be right; I would need more context to say."
            elif judged_right:
                verdict = "The submission matches the criterion.\nGRADE: C"
            else:
                verdict = "The submission does not match the criterion.\nGRADE: I"
            prompt_tokens = 70 + 2 * len(item["question"].split())
            out.append(line(f"{judge_prefix(model)}{item['id']}__j1", JUDGE, verdict, prompt_tokens))
    rng.shuffle(out)  # output files do not follow the input order
    with OUT.open("w") as fh:
        for rec in out:
            fh.write(json.dumps(rec) + "\n")
    print(f"{len(out)} recorded lines ({len(MODELS)} models + judge) -> {OUT}")


if __name__ == "__main__":
    main()
