"""Who queries what: the index as scored (ids, labels, patients) and the queries of each protocol.

`split`: the index holds one split, the other split queries it. `leave-one-patient-out`: every indexed image
queries all the others, and no image of its own patient counts (nor is returned) — the search asks for extra hits
and drops them. Patients come from the manifest, never from Milvus.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from cbmir.ingestion.sources import SourceItem


@dataclass(frozen=True)
class Entry:
    """One indexed image as the scorer sees it."""

    id: str
    source: str
    label: str
    group: str  # patient; an image without one is its own group


@dataclass(frozen=True)
class Query:
    key: str  # the query image's source name
    label: str
    group: str
    item: SourceItem | None = None  # to send its bytes or embed it
    stored_id: str = ""  # leave-one-patient-out: the query is also an index row


@dataclass
class Ranking:
    """One query's hits at each search depth, best first, the query's own patient already removed."""

    query: Query
    n_relevant: int
    hits: dict[int, list[str]] = field(default_factory=dict)  # depth → entry ids
    labels: dict[int, list[str]] = field(default_factory=dict)  # depth → their labels
    extra: dict[str, object] = field(default_factory=dict)  # predicted class, prefilter applied, timings …


class IndexView:
    """The index's entries with the counts a scorer needs: relevant items and excluded items per query.

    `is_unlabelled` names label values that are no class ("", "?", ...): their entries keep an empty label, so
    they are ranked like any image but never relevant to a query and never counted as a class."""

    def __init__(self, entries: Iterable[Entry],
                 is_unlabelled: Callable[[str], bool] = lambda label: not label) -> None:
        self.entries = [e if not is_unlabelled(e.label) else replace(e, label="") for e in entries]
        self.by_id = {e.id: e for e in self.entries}
        self.label_counts = Counter(e.label for e in self.entries)
        self.group_counts = Counter(e.group for e in self.entries)
        self.group_label_counts = Counter((e.group, e.label) for e in self.entries)
        by_group: dict[str, list[str]] = defaultdict(list)
        for e in self.entries:
            by_group[e.group].append(e.id)
        self.ids_by_group = {group: tuple(ids) for group, ids in by_group.items()}

    def __len__(self) -> int:
        return len(self.entries)

    def n_relevant(self, query: Query) -> int:
        """Same label, other patient (and never the query itself)."""
        return self.label_counts[query.label] - self.group_label_counts[(query.group, query.label)]

    def n_excluded(self, query: Query) -> int:
        """How many index images belong to the query's patient: the extra hits a search must ask for."""
        return self.group_counts[query.group]

    def ids_of_patient(self, query: Query) -> tuple[str, ...]:
        """The index images of the query's patient (itself included, when it is one): never to be returned."""
        return self.ids_by_group.get(query.group, ())

    def keep(self, query: Query, hit_ids: Sequence[str], depth: int) -> list[str]:
        """The first `depth` hits not of the query's patient."""
        kept = [i for i in hit_ids if i in self.by_id and self.by_id[i].group != query.group]
        return kept[:depth]

    def max_excluded(self) -> int:
        return max(self.group_counts.values(), default=0)


def group_of(source: str, groups: dict[str, str], namespace: str) -> str:
    """The patient of an image, or a group of its own (namespaced, so index and query images never collide)."""
    patient = groups.get(source, "")
    return f"patient:{patient}" if patient else f"{namespace}:{source}"


def split_queries(items: Sequence[SourceItem], groups: dict[str, str],
                  is_unlabelled: Callable[[str], bool] = lambda label: not label) -> list[Query]:
    """The query split's images, but for the unlabelled ones: an image of no class has nothing to retrieve."""
    return [Query(key=item.name, label=item.label, group=group_of(item.name, groups, "query"), item=item)
            for item in items if not is_unlabelled(item.label)]


def leave_one_patient_out_queries(index: IndexView, items_by_source: dict[str, SourceItem]) -> list[Query]:
    """Every labelled index image (IndexView has already emptied the labels of unlabelled ones)."""
    return [Query(key=e.source, label=e.label, group=e.group, item=items_by_source.get(e.source), stored_id=e.id)
            for e in sorted(index.entries, key=lambda e: e.source) if e.label]
