"""The persisted state of a job: small, JSON, written atomically after every transition.

A job lives next to its output file::

    OUT                  the merged results (written when the job finishes)
    OUT.state.json       this state: parts, their batches, counters
    OUT.lease            who is stepping the job right now (see batch_ops.jobs.lease)
    OUT.work/parts/      request files, one per part (round 0 = shards of the input,
                         later rounds = the retryable failures of a harvested part)
    OUT.work/results/    per part: the final line of every request that will not run again
                         (after a repair round, a new file: <part>.repair<N>.jsonl)
    OUT.work/downloads/  output and error files of finished batches

Every write goes to a temporary file and is renamed into place, so a job killed at any
instant resumes from a consistent state.

Examples:
    >>> s = JobState(job_id="j1", endpoint="/v1/embeddings", input_path="in.jsonl", output_path="out.jsonl",
    ...              total=3, created_at=0.0, max_rounds=2)
    >>> s.parts.append(PartState(name="r0-001", round=0, path="p.jsonl", requests=3))
    >>> s.active(), s.pending(now=0.0)[0].name
    ([], 'r0-001')
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from batch_ops._files import atomic_write

__all__ = ["JobState", "PartState", "RepairState", "load_state", "save_state", "state_path_for", "work_dir_for"]

#: ``repairing``: the part's answers are in its results; a repair round of its invalid ones is being submitted
#: (``repairs[-1].batch_id`` None) or runs.
PartStatus = Literal["pending", "submitting", "running", "repairing", "harvested"]


class RepairState(BaseModel):
    """One repair round of a part (:mod:`batch_ops._repair`): the requests whose answers are invalid, resubmitted
    as the next attempt of the part's chain.

    Written before the round is submitted (``batch_id`` None), so a worker that dies while submitting it, or
    another worker stepping the job, submits it again under the part's key: the submission core attaches to
    the attempt already made instead of paying for a second one.
    """

    model_config = ConfigDict(extra="forbid")
    round: int
    #: The batch of the attempt whose answers the round reads (the part's batch, or the previous round's).
    after: str
    #: Invalid answers found, by reason (``schema``, ``bad_json``, ``refusal``, ``truncated``, ...).
    invalid: dict[str, int] = Field(default_factory=dict)
    batch_id: str | None = None
    carried: int | None = None
    #: The round's upper bound (USD) and its actual cost once harvested.
    upper_usd: float | None = None
    cost_usd: float | None = None
    #: The budget's message when ``max_cost_usd`` refused the round (nothing of it was uploaded).
    refused: str | None = None
    #: How the round's batch ended; of the requests it carried, how many now have a valid answer; and how many
    #: of the part's answers are still invalid after it.
    outcome: str | None = None
    repaired: int = 0
    still_invalid: int | None = None


class PartState(BaseModel):
    """One request file that runs as one batch (resubmitted while the token limit refuses it)."""

    model_config = ConfigDict(extra="forbid")
    name: str
    round: int
    path: str
    requests: int
    status: PartStatus = "pending"
    submits: int = 0
    key: str | None = None
    batch_id: str | None = None
    not_before: float = 0.0
    outcome: str | None = None
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    #: Billed tokens of this part's batch, per model (see harvest.UsageTotals).
    usage: dict[str, dict[str, int]] = Field(default_factory=dict)
    #: The upper bound of the part's last created attempt (USD), and its actual cost once harvested.
    upper_usd: float | None = None
    cost_usd: float | None = None
    #: The requests' fingerprint (``Submission.fingerprint``): picks the part's chain when a repair round reads it.
    fingerprint: str | None = None
    #: The part's repair rounds, in order (see :class:`RepairState`).
    repairs: list[RepairState] = Field(default_factory=list)

    @property
    def results(self) -> str:
        """The work file of the part's final results: its harvest's, or the last repair round's that answered.

        A round writes a new file rather than rewriting the harvest's: a worker's cache of a job on object storage
        never holds a stale copy of a results file (a name is written once), and the state names the one to read.

        Examples:
            >>> part = PartState(name="r0-001", round=0, path="parts/r0-001.jsonl", requests=3)
            >>> part.results
            'results/r0-001.jsonl'
            >>> part.repairs.append(RepairState(round=1, after="b0", batch_id="b1", outcome="completed"))
            >>> part.results
            'results/r0-001.repair1.jsonl'
        """
        applied = [r.round for r in self.repairs if r.outcome is not None and r.outcome != "failed"]
        return f"results/{self.name}.repair{applied[-1]}.jsonl" if applied else f"results/{self.name}.jsonl"

    @property
    def repair_batch(self) -> str | None:
        """The batch of the repair round in progress (None: none runs)."""
        last = self.repairs[-1] if self.repairs else None
        return last.batch_id if self.status == "repairing" and last is not None else None


class JobState(BaseModel):
    """Everything needed to resume a job; see the module docstring for the files around it."""

    model_config = ConfigDict(extra="forbid")
    version: int = 1
    job_id: str
    endpoint: str
    input_path: str
    output_path: str
    total: int
    created_at: float
    max_rounds: int
    token_limit_backoff: float = 60.0
    metadata: dict[str, str] = Field(default_factory=dict)
    parts: list[PartState] = Field(default_factory=list)
    batch_ids: list[str] = Field(default_factory=list)
    token_limit_resubmits: int = 0
    finished_at: float | None = None
    #: The batch API the parts were checked and sharded for (None: OpenAI's, as before providers).
    provider: str | None = None
    #: The JSON Schema every answer must follow (``ResponseSchema.to_json()``; None: free answers).
    response_schema: dict[str, Any] | None = None
    #: Why the job stopped submitting (its budget), and how far it got; None: it did not.
    budget_stop: str | None = None
    #: Repair rounds per part (``JobConfig.repair_rounds``) and whether they carry each answer's fault.
    repair_rounds: int = 0
    repair_feedback: bool = False

    def active(self) -> list[PartState]:
        """Parts with a batch that may be running (or being created): a repair round's too."""
        return [p for p in self.parts if p.status in ("submitting", "running", "repairing")]

    def pending(self, *, now: float) -> list[PartState]:
        """Parts ready to submit now, oldest round first."""
        ready = [p for p in self.parts if p.status == "pending" and p.not_before <= now]
        return sorted(ready, key=lambda p: (p.round, p.name))

    def next_wake(self) -> float | None:
        """The earliest ``not_before`` among parts waiting out a back-off."""
        waits = [p.not_before for p in self.parts if p.status == "pending"]
        return min(waits) if waits else None

    @property
    def done(self) -> bool:
        return bool(self.parts) and all(p.status == "harvested" for p in self.parts)


def state_path_for(output_path: str | os.PathLike[str]) -> Path:
    return Path(f"{os.fspath(output_path)}.state.json")


def work_dir_for(output_path: str | os.PathLike[str]) -> Path:
    return Path(f"{os.fspath(output_path)}.work")


def save_state(state: JobState, path: Path) -> None:
    """Write atomically (temp file + fsync + rename)."""
    atomic_write(path, [state.model_dump_json(indent=1).encode()])


def load_state(path: Path) -> JobState | None:
    """The state at ``path``, as stored (unchecked: a job reads its state through ``JobStore.load``, which
    confines the paths in it to the job's work folder)."""
    if not path.exists():
        return None
    return JobState.model_validate(json.loads(path.read_text(encoding="utf-8")))
