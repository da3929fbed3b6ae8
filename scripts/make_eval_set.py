"""Regenerate the shipped eval set and its recorded sample run (deterministic; seed 2026).

Writes ``batch_ops/evals/data/nightly_eval.jsonl`` (the questions with expected answers and
the scorer for each) and ``batch_ops/evals/data/sample_run.jsonl`` (a recorded Batch API
output file for that set: synthetic answers from a model that is right most of the time, in
the real output-line format). The local server's ``replay`` engine answers from the recorded
run, so ``make demo`` scores real server responses offline.

Usage: ``python scripts/make_eval_set.py`` (only needed when changing the set).
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parents[1] / "batch_ops" / "evals" / "data"
MODEL = "gpt-4o-mini"

CAPITALS = {
    "France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Spain": "Madrid", "Germany": "Berlin",
    "Canada": "Ottawa", "Australia": "Canberra", "Brazil": "Brasilia", "Egypt": "Cairo", "Kenya": "Nairobi",
    "Norway": "Oslo", "Sweden": "Stockholm", "Finland": "Helsinki", "Poland": "Warsaw", "Portugal": "Lisbon",
    "Greece": "Athens", "Turkey": "Ankara", "India": "New Delhi", "China": "Beijing", "Peru": "Lima",
    "Chile": "Santiago", "Argentina": "Buenos Aires", "Mexico": "Mexico City", "Ireland": "Dublin",
    "Austria": "Vienna", "Hungary": "Budapest", "Denmark": "Copenhagen", "Thailand": "Bangkok",
    "Vietnam": "Hanoi", "Morocco": "Rabat",
}
ELEMENTS = {
    "Fe": "iron", "Au": "gold", "Ag": "silver", "Na": "sodium", "K": "potassium", "Cu": "copper",
    "Pb": "lead", "Sn": "tin", "Hg": "mercury", "He": "helium", "Ne": "neon", "O": "oxygen",
    "N": "nitrogen", "C": "carbon", "Zn": "zinc", "Ca": "calcium", "Mg": "magnesium", "Cl": "chlorine",
    "S": "sulfur", "P": "phosphorus",
}
WORDS = [
    "batch", "airflow", "prefect", "queue", "token", "window", "stream", "shard", "merge", "retry",
    "sensor", "trigger", "python", "kernel", "vector", "lambda", "matrix", "signal", "buffer", "socket",
    "thread", "cursor", "schema", "record", "column",
]


def items(rng: random.Random) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(kind: str, question: str, expected: str, scorer: str, **extra: Any) -> None:
        out.append({"id": f"{kind}-{len([i for i in out if i['id'].startswith(kind)]):03d}", "category": kind,
                    "question": question, "expected": expected, "scorer": scorer, **extra})

    for _ in range(60):
        a, b = rng.randint(10, 999), rng.randint(10, 999)
        op = rng.choice("+-*")
        value = {"+": a + b, "-": a - b, "*": a * b}[op]
        add("arith", f"What is {a} {op} {b}? Answer with the number only.", str(value), "numeric", tolerance=0)
    for _ in range(30):
        a, b = rng.randint(100, 9999), rng.randint(3, 97)
        add("divide", f"What is {a} divided by {b}, to two decimal places? Answer with the number only.",
            f"{a / b:.2f}", "numeric", tolerance=0.01)
    for country, capital in CAPITALS.items():
        add("capital", f"What is the capital of {country}? Answer with the city name only.", capital, "exact")
    for symbol, name in ELEMENTS.items():
        add("element", f"Which chemical element has the symbol {symbol}?", name, "contains")
    for _ in range(30):
        metres = round(rng.uniform(0.1, 50), 2)
        add("units", f"How many centimetres are in {metres} metres? Answer with the number only.",
            f"{metres * 100:g}", "numeric", tolerance=0.5)
    for word in WORDS:
        add("reverse", f"Spell the word '{word}' backwards. Answer with the reversed word only.", word[::-1], "exact")
    for _ in range(15):
        n = rng.randint(2, 60)
        add("prime", f"Is {n} a prime number? Answer yes or no.",
            "yes" if n > 1 and all(n % d for d in range(2, int(n**0.5) + 1)) else "no", "exact")
    return out


def wrong_answer(item: dict[str, Any], rng: random.Random) -> str:
    expected = item["expected"]
    if item["scorer"] == "numeric":
        return f"{float(expected) + rng.choice([-10, -1, 1, 2, 10]):g}"
    if item["category"] == "capital":
        return rng.choice([c for c in CAPITALS.values() if c != expected])
    if item["category"] == "prime":
        return "no" if expected == "yes" else "yes"
    if item["category"] == "reverse":
        return expected[1:] + expected[0]
    return "I am not sure."


def answer_text(item: dict[str, Any], right: bool, rng: random.Random) -> str:
    answer = item["expected"] if right else wrong_answer(item, rng)
    if item["scorer"] == "contains":
        return f"The element is {answer}." if right else answer
    return answer


def recorded_line(item: dict[str, Any], content: str) -> dict[str, Any]:
    digest = hashlib.sha256(item["id"].encode()).hexdigest()
    prompt_tokens = 18 + len(item["question"].split())
    completion_tokens = max(1, len(content.split()))
    return {
        "id": f"batch_req_{digest[:24]}",
        "custom_id": item["id"],
        "response": {
            "status_code": 200,
            "request_id": f"req_{digest[24:48]}",
            "body": {
                "id": f"chatcmpl-{digest[:20]}", "object": "chat.completion", "created": 1763700000, "model": MODEL,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "finish_reason": "stop", "logprobs": None}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens,
                          "prompt_tokens_details": {"cached_tokens": 0},
                          "completion_tokens_details": {"reasoning_tokens": 0}},
            },
        },
        "error": None,
    }


def main() -> None:
    rng = random.Random(2026)
    eval_items = items(rng)
    OUT.mkdir(parents=True, exist_ok=True)
    with (OUT / "nightly_eval.jsonl").open("w") as fh:
        for item in eval_items:
            fh.write(json.dumps(item) + "\n")
    lines = [recorded_line(item, answer_text(item, rng.random() < 0.88, rng)) for item in eval_items]
    rng.shuffle(lines)  # output files do not follow the input order
    with (OUT / "sample_run.jsonl").open("w") as fh:
        for line in lines:
            fh.write(json.dumps(line) + "\n")
    print(f"{len(eval_items)} items -> {OUT}")


if __name__ == "__main__":
    main()
