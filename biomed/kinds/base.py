"""What declares a kind of model: its name, its preprocessing spec, its v2 signature and its piece of the schema."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol


class Spec(Protocol):
    """A kind's preprocessing spec: rebuilt from, and written to, the metadata's ``preprocess`` block."""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Spec": ...

    def to_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class PersonInput:
    """The v2 BYTES input that takes what a person has (whole files, DNA text) instead of the model's tensor.

    Attributes:
        name: the input's name (``file``, ``sequence``).
        items: what one element is, plural, for messages ("files", "sequences").
        base64_in_json: whether a JSON element is base64 of bytes (a file is not text) or the text itself.
        cap: the ``biomed.settings.Settings`` field that caps the elements of one request.
        outputs: extra outputs of this way of calling, (name, v2 datatype), shape ``[-1]``, one value per row.
        parameters: the v2 request parameters it takes, each with its default (a value of the type it takes).
    """

    name: str
    items: str
    base64_in_json: bool
    cap: str
    outputs: tuple[tuple[str, str], ...] = ()
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Kind:
    """A kind of model, declared once (``biomed.kinds``): serving and training register their parts under its name.

    Attributes:
        name: as the metadata's ``kind`` says it.
        summary: what its models take and give, one line for listings and messages.
        spec: the preprocessing spec class (``from_dict``/``to_dict`` of the metadata's ``preprocess`` block).
        person: the v2 input of what a person has.
        preprocess_schema: the JSON schema of its ``preprocess`` block (``type`` is the kind's name).
        row: what one model row is, for messages ("frame", "window").
    """

    name: str
    summary: str
    spec: type
    person: PersonInput
    preprocess_schema: Mapping[str, Any]
    row: str

    def spec_of(self, doc: Mapping[str, Any]) -> Any:
        """The preprocessing spec of a model's metadata document."""
        return self.spec.from_dict(doc["preprocess"])
