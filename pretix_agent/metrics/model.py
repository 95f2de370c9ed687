"""Metrics as plain values: what a section declares and samples, grouped into families.

Pure: no I/O, no clock, no prometheus_client. `families(document, sections)` is what a scrape and
the textfile render; exposition.py turns it into Prometheus's text format.

Every declared metric is rendered, with no sample when the document has no value for it (a
section that is not configured, a value the probe could not measure): the scrape lists what the
agent can export, and "could not measure" never becomes a zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

GAUGE = "gauge"
COUNTER = "counter"

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Spec:
    """One metric: its name (`pretix_agent_`, base units, a counter ends in `_total`), its kind, its
    help text and its label names."""

    name: str
    kind: str
    help: str
    labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class Sample:
    """One value of a metric. None is "not measured" and renders no sample; True and False are 1 and 0."""

    name: str
    value: float | bool | None
    labels: Labels = ()


def sample(name: str, value: Any, **labels: str) -> Sample:
    return Sample(name, value, tuple(sorted(labels.items())))


@dataclass(frozen=True)
class Section:
    """One part of the status document as metrics: what it declares and how to sample it."""

    name: str
    specs: tuple[Spec, ...]
    samples: Callable[[Any], Iterable[Sample]]  # given the status document


@dataclass(frozen=True)
class Family:
    spec: Spec
    samples: tuple[tuple[tuple[str, ...], float], ...]  # label values in the order of spec.labels


SECTION_FAILED = Spec("pretix_agent_metrics_section_failed", GAUGE,
                      "1 while a section of the metrics cannot be rendered (a bug: its metrics have no samples; "
                      "the other sections are served).", ("section",))


class SectionError(ValueError):
    """A section sampled what it did not declare: a bug, caught by the unit tests."""


def _number(value: float | bool) -> float | None:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
        return None if math.isnan(number) else number
    raise SectionError(f"not a number: {value!r}")


def _collect(section: Section, document: Any) -> dict[str, list[tuple[tuple[str, ...], float]]]:
    declared = {spec.name: spec for spec in section.specs}
    out: dict[str, list[tuple[tuple[str, ...], float]]] = {name: [] for name in declared}
    seen: set[tuple[str, tuple[str, ...]]] = set()
    for item in section.samples(document):
        spec = declared.get(item.name)
        if spec is None:
            raise SectionError(f"{section.name}: {item.name} is not declared")
        names = tuple(name for name, _ in item.labels)
        if sorted(names) != sorted(spec.labels):
            raise SectionError(f"{section.name}: {item.name} has labels {names}, declared {spec.labels}")
        if item.value is None:
            continue
        values = tuple(dict(item.labels)[name] for name in spec.labels)
        if (item.name, values) in seen:
            raise SectionError(f"{section.name}: {item.name}{values} sampled twice")
        seen.add((item.name, values))
        number = _number(item.value)
        if number is not None:
            out[item.name].append((values, number))
    return out


def families(document: Any, sections: Sequence[Section]) -> list[Family]:
    """Given a status document, return every metric the sections declare, in order, with its samples.

    A section that raises (a bug in it, or a document it did not expect) contributes no samples and
    is named by `pretix_agent_metrics_section_failed`; the other sections are not affected."""
    result: list[Family] = []
    failed: list[str] = []
    for section in sections:
        try:
            collected = _collect(section, document)
        except Exception:  # a bug in one section must not cost the others
            collected = {spec.name: [] for spec in section.specs}
            failed.append(section.name)
        result.extend(Family(spec, tuple(collected[spec.name])) for spec in section.specs)
    result.append(Family(SECTION_FAILED, tuple(((name,), 1.0 if name in failed else 0.0)
                                               for name in (section.name for section in sections))))
    return result


def declared(sections: Sequence[Section]) -> list[Spec]:
    """Every metric the sections declare, and the one about the sections themselves."""
    return [spec for section in sections for spec in section.specs] + [SECTION_FAILED]


def reference_markdown(sections: Sequence[Section]) -> str:
    """Render every metric as the reference in docs/metrics.md (kept current by a test)."""
    out = []
    for title, specs in [*((section.name, section.specs) for section in sections), ("metrics", (SECTION_FAILED,))]:
        out.append(f"#### {title}\n\n| metric | type | labels | meaning |\n| --- | --- | --- | --- |")
        for spec in specs:
            labels = ", ".join(f"`{label}`" for label in spec.labels) or "-"
            out.append(f"| `{spec.name}` | {spec.kind} | {labels} | {spec.help} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"
