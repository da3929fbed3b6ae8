"""`make demo-core`: one batch, end to end, with the core client against the local server.

Starts ``batch-ops serve`` on a free loopback port (echo engine, a little processing latency
and a few injected request failures so the error file shows up), submits 24 chat requests
with the core client, waits with a progress bar, prints the outcome and a few joined results,
and stops the server. No API key, no network.
"""

from __future__ import annotations

import sys
import tempfile
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from batch_ops import Batch, BatchClient
from batch_ops.server import serve_in_background

QUESTIONS = [
    "What is 2 + 2?", "Name the capital of France.", "What colour is the sky on a clear day?",
    "How many legs does a spider have?", "What is the boiling point of water in Celsius?",
    "Who wrote Hamlet?", "What is the square root of 81?", "Which planet is known as the red planet?",
    "How many days are in a leap year?", "What gas do plants absorb?", "What is 12 times 12?",
    "What is the largest ocean?", "How many continents are there?", "What is H2O?",
    "What is the freezing point of water in Fahrenheit?", "Translate 'hello' to Spanish.",
    "What is 100 divided by 4?", "Which animal is the largest mammal?", "How many sides has a hexagon?",
    "What is the chemical symbol for gold?", "How many minutes are in an hour?",
    "What is the tallest mountain?", "What language has the most native speakers?", "What is 7 + 8?",
]


def main() -> int:
    console = Console()
    requests = [
        {"custom_id": f"q-{i:03d}", "body": {"model": "gpt-4o-mini", "messages": [
            {"role": "system", "content": "Answer briefly."}, {"role": "user", "content": q}]}}
        for i, q in enumerate(QUESTIONS)
    ]
    with tempfile.TemporaryDirectory(prefix="batch_ops_demo_") as data_dir, serve_in_background(
        data_dir=data_dir, request_latency=0.05, fail_requests=0.1, seed=7
    ) as base_url:
        console.print(f"[bold]local Batch API server[/] at {base_url} (echo engine, 10% injected request failures)")
        with BatchClient(api_key="local-demo-key", base_url=base_url) as client:
            batch = client.submit(requests, endpoint="/v1/chat/completions", metadata={"job": "make-demo"})
            console.print(f"submitted [cyan]{batch.id}[/] with {len(requests)} chat requests")
            started = time.monotonic()
            with Progress(
                TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), console=console,
            ) as progress:
                task = progress.add_task("validating", total=len(requests))

                def show(b: Batch) -> None:
                    progress.update(task, completed=b.request_counts.done, description=b.status.value)

                batch = client.batches.wait(batch.id, poll_interval=0.25, timeout=120, on_poll=show)
            elapsed = time.monotonic() - started

            table = Table(title=f"batch {batch.id}", show_header=False)
            c, u = batch.request_counts, batch.usage
            table.add_row("status", batch.status.value)
            table.add_row("requests", f"{c.total} total, {c.completed} completed, {c.failed} failed")
            if u is not None:
                table.add_row("usage", f"{u.input_tokens} input + {u.output_tokens} output = {u.total_tokens} tokens")
            table.add_row("output_file_id", str(batch.output_file_id))
            table.add_row("error_file_id", str(batch.error_file_id))
            table.add_row("waited", f"{elapsed:.1f} s")
            console.print(table)

            results = Table(title=f"joined results: {batch.request_counts.total} requests, in input order")
            for column in ("custom_id", "ok", "answer / error"):
                results.add_column(column)
            joined = list(client.results(batch))
            shown = joined[:5] + [r for r in joined[5:] if not r.ok][:3]  # a few answers and the failures
            for line in shown:
                if line.ok:
                    text = line.body["choices"][0]["message"]["content"]
                else:
                    text = f"[red]{line.error_code}[/]"
                results.add_row(line.custom_id, "yes" if line.ok else "no", text)
            console.print(results)
    return 0 if batch.status.value == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
