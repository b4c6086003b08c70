"""Reading Prometheus exposition text in tests: parsed with prometheus_client.parser.

`Scrape` holds every sample of one scrape by (sample name, labels); a real endpoint is
read with `scrape(url)`, a registry without HTTP with `Scrape.of(registry)`.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class Scrape:
    """One scrape: its metric families and samples."""

    families: dict[str, Metric]
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]

    @classmethod
    def parse(cls, text: str) -> Scrape:
        families = {family.name: family for family in text_string_to_metric_families(text)}
        samples = {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in families.values()
            for sample in family.samples
        }
        return cls(families, samples)

    @classmethod
    def of(cls, registry: CollectorRegistry) -> Scrape:
        return cls.parse(generate_latest(registry).decode("utf-8"))

    def value(self, name: str, labels: Mapping[str, str] | None = None) -> float:
        """A sample's value; 0 when the labelled child does not exist (yet)."""
        return self.samples.get((name, frozenset((labels or {}).items())), 0.0)

    def type_of(self, family: str) -> str:
        return self.families[family].type

    def label_values(self, family: str, label: str, *, nonzero: bool = False) -> set[str]:
        """The values `label` has in `family`'s samples (only those of non-zero samples)."""
        return {
            s.labels[label]
            for s in self.families[family].samples
            if label in s.labels and (s.value or not nonzero)
        }

    def bucket(self, histogram: str, le: str, labels: Mapping[str, str] | None = None) -> float:
        return self.value(f"{histogram}_bucket", {**(labels or {}), "le": le})


def scrape(url: str) -> Scrape:
    """GET a /metrics endpoint and parse it."""
    with urllib.request.urlopen(url, timeout=10) as response:
        return Scrape.parse(response.read().decode("utf-8"))
