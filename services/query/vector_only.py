"""What `cbmir serve --vectors-only` serves with instead of a CNN: the collection's own model identity, no weights.

Clients that embed themselves (a GPU fleet, another service) send vectors or stored ids; the server then needs no
model in memory and no start-up load, and it still refuses vectors of another model's collection, since every
collection it serves must record this same identity. Image queries get FAILED_PRECONDITION.
"""

from __future__ import annotations

from dataclasses import dataclass

from cbmir.services.embedding import ModelIdentity


@dataclass(frozen=True)
class StoredVectorsModel:
    """Stands where an EmbeddingModel would, for the vector and id paths only."""

    identity: ModelIdentity
    identity_json: str  # as the collection recorded it: compared verbatim with every served collection's
    classes: None = None  # no classifier head: the PREDICTED prefilter is refused, EXPLICIT works

    @property
    def dim(self) -> int:
        return self.identity.dim

    @property
    def precision(self) -> str:
        return self.identity.precision

    @classmethod
    def of_collection(cls, identity_json: str) -> StoredVectorsModel:
        if not identity_json:
            raise ValueError("the collection records no model identity: --vectors-only cannot tell whose vectors "
                             "it holds (serve it with the model that wrote it)")
        return cls(ModelIdentity.from_json(identity_json), identity_json)
