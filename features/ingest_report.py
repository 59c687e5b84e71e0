"""What an ingest run reports: per source and in total, with every record's place accounted for.

features/ingest.py fills these; features/ingest_traces.py explains the trace terms (spans and log
records are counted one by one; `context`, `carried_in` and `buffered` account for the trace buffer).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class SourceReport:
    """What became of one source's records: read + carried_in == accepted + duplicates + sum(quarantined)
    + context + buffered. For JSONL, one record per line (or batch element) and the trace terms are 0;
    for traces, a record is a span or log record (features/ingest_traces.py)."""

    source: str
    # new | changed (the manifest had another size or fingerprint) | forced (unchanged, re-read: config.force)
    # | unchanged (skipped, nothing read)
    status: str = "new"
    read: int = 0
    accepted: int = 0
    duplicates: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)  # reason -> records
    duplicate_kinds: dict[str, int] = field(default_factory=dict)  # same_id | same_content | quarantine
    redactions: dict[str, int] = field(default_factory=dict)  # type -> placeholders in accepted rows
    guard_warnings: dict[str, int] = field(default_factory=dict)  # warn-level rule -> accepted rows
    # Already stored interactions that carry a poisoning trigger confirmed only now (the store is
    # append-only: a person decides; see features.guard.PoisonReport.earlier_ids).
    poisoning_earlier_ids: list[str] = field(default_factory=list)
    lines: int = 0
    blank_lines: int = 0
    empty_batches: int = 0
    bytes: int = 0
    sha256: str = ""
    spans: int = 0  # OTLP / MLflow spans read
    log_records: int = 0  # OTLP log records read
    context: int = 0  # units used up without a row of their own (non-chat spans, joined log records)
    carried_in: int = 0  # units waiting in the trace buffer when this source began
    buffered: int = 0  # units waiting in the trace buffer when it ended (committed state)
    incomplete_traces: list[dict] = field(default_factory=list)  # traces closed without a chat span

    @property
    def quarantined_total(self) -> int:
        return sum(self.quarantined.values())

    def conserved(self) -> bool:
        return self.read + self.carried_in == (
            self.accepted + self.duplicates + self.quarantined_total + self.context + self.buffered
        )

    def check(self) -> None:
        if not self.conserved():
            raise RuntimeError(
                f"ingest lost count of records in {self.source}: read {self.read} + carried in {self.carried_in} != "
                f"accepted {self.accepted} + duplicates {self.duplicates} + quarantined {self.quarantined_total} + "
                f"context {self.context} + buffered {self.buffered}; nothing of it was committed. "
                "This is a bug in features/ingest.py: report it with the source file"
            )


@dataclass
class IngestReport:
    """One ingest run: per source and in total. Every source's counts are conserved."""

    run_id: str
    store: str
    started_at: str
    finished_at: str = ""
    seconds: float = 0.0
    sources: list[SourceReport] = field(default_factory=list)
    recovered: dict = field(
        default_factory=dict
    )  # what Store.recover undid first (a commit the ledger never got)
    migrated_parts: list[str] = field(default_factory=list)  # parts Store.migrate rewrote to schema v2

    def _sum(self, name: str) -> int:
        return sum(getattr(s, name) for s in self.sources)

    @property
    def read(self) -> int:
        return self._sum("read")

    @property
    def accepted(self) -> int:
        return self._sum("accepted")

    @property
    def duplicates(self) -> int:
        return self._sum("duplicates")

    @property
    def quarantined(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.sources:
            for reason, n in s.quarantined.items():
                out[reason] = out.get(reason, 0) + n
        return dict(sorted(out.items()))

    @property
    def quarantined_total(self) -> int:
        return sum(self.quarantined.values())

    @property
    def skipped_sources(self) -> list[str]:
        return [s.source for s in self.sources if s.status == "unchanged"]

    @property
    def records_per_second(self) -> float:
        return self.read / self.seconds if self.seconds > 0 else 0.0

    def check(self) -> None:
        for s in self.sources:
            s.check()

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(
            read=self.read,
            accepted=self.accepted,
            duplicates=self.duplicates,
            quarantined=self.quarantined,
            quarantined_total=self.quarantined_total,
            skipped_sources=self.skipped_sources,
        )
        for s_dict, s in zip(d["sources"], self.sources, strict=True):
            s_dict["quarantined_total"] = s.quarantined_total
        return d

    def summary(self) -> str:
        reasons = ", ".join(f"{r}={n}" for r, n in self.quarantined.items()) or "none"
        ingested = sum(1 for s in self.sources if s.status != "unchanged")
        return (
            f"ingest {self.run_id}: read {self.read} records from {ingested} sources "
            f"({len(self.skipped_sources)} unchanged, skipped): accepted {self.accepted}, duplicates "
            f"{self.duplicates}, quarantined {self.quarantined_total} ({reasons}) into {self.store} "
            f"in {self.seconds:.1f}s"
        )

    def to_markdown(self) -> str:
        lines = [
            f"### Ingest {self.run_id}",
            "",
            f"store `{self.store}`, started {self.started_at}, {self.seconds:.1f}s",
            "",
            "| source | status | read | accepted | duplicates | quarantined |",
            "| --- | --- | ---: | ---: | ---: | ---: |",
        ]
        for s in self.sources:
            lines.append(
                f"| `{s.source}` | {s.status} | {s.read} | {s.accepted} | {s.duplicates} | {s.quarantined_total} |"
            )
        lines.append(
            f"| **total** | | **{self.read}** | **{self.accepted}** | **{self.duplicates}** | "
            f"**{self.quarantined_total}** |"
        )
        if self.quarantined:
            lines += ["", "| quarantine reason | records |", "| --- | ---: |"]
            lines += [f"| `{r}` | {n} |" for r, n in self.quarantined.items()]
        spans = sum(s.spans for s in self.sources)
        if spans or any(s.log_records for s in self.sources):
            waiting = self.sources[-1].buffered if self.sources else 0
            lines += [
                "",
                f"traces: {spans} spans and {sum(s.log_records for s in self.sources)} log records read, "
                f"{sum(s.context for s in self.sources)} used as context, {waiting} still waiting in the trace buffer",
            ]
        incomplete = [t for s in self.sources for t in s.incomplete_traces]
        if incomplete:
            lines += ["", f"{len(incomplete)} traces closed without a chat span (no interaction in them):"]
            lines += [
                f"- `{t['trace_id']}` ({t['spans']} spans, agents {t['agents']})" for t in incomplete[:20]
            ]
        return "\n".join(lines) + "\n"
