"""Request and response bodies of the JSON endpoints (pydantic); they also make the OpenAPI document."""

from __future__ import annotations

from typing import Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NamedSequence(_Strict):
    id: StrictStr = Field(max_length=256)
    sequence: StrictStr


class DnaRequest(_Strict):
    sequences: list[Union[StrictStr, NamedSequence]] = Field(min_length=1)
    model: Optional[StrictStr] = Field(default=None, max_length=200)
    reverse_complement: StrictBool = True


class Variant(_Strict):
    id: Optional[StrictStr] = Field(default=None, max_length=256)
    sequence: StrictStr
    position: StrictInt = Field(ge=0)
    ref: StrictStr = Field(min_length=1, max_length=1)
    alt: StrictStr = Field(min_length=1, max_length=1)


class VariantsRequest(_Strict):
    variants: list[Variant] = Field(min_length=1)
    model: Optional[StrictStr] = Field(default=None, max_length=200)
    reverse_complement: StrictBool = True


class ExplainRequest(_Strict):
    sequence: StrictStr = Field(min_length=1)
    model: Optional[StrictStr] = Field(default=None, max_length=200)
    task: Optional[StrictStr] = Field(default=None, max_length=200)
    reverse_complement: StrictBool = True


class ErrorBody(BaseModel):
    error: str = Field(description="short machine-readable code")
    detail: str = Field(description="what was wrong and what is accepted")


class Window(BaseModel):
    start: int
    end: int
    probabilities: dict[str, float]


class DnaPrediction(BaseModel):
    id: str
    length: int
    probabilities: dict[str, float]
    windows: Optional[list[Window]] = None


class DnaResponse(BaseModel):
    model: str
    version: str
    predictions: list[DnaPrediction]


class FramePrediction(BaseModel):
    frame: int
    label: str
    probabilities: dict[str, float]


class ImageResponse(BaseModel):
    model: str
    version: str
    predictions: list[FramePrediction]
    input: dict


class VariantScore(BaseModel):
    id: str
    ref: dict[str, float]
    alt: dict[str, float]
    diff: dict[str, float]
    log_odds_diff: dict[str, float]


class VariantsResponse(BaseModel):
    model: str
    version: str
    variants: list[VariantScore]


class ExplainResponse(BaseModel):
    model: str
    version: str
    task: str
    probability: float
    scores: list[list[float]]
    importance: list[float]


class ModelsResponse(BaseModel):
    models: list[dict] = Field(description="one entry per loaded model (see docs/api.md)")
