"""Request and response bodies of the JSON endpoints (pydantic); they also make the OpenAPI document."""

from __future__ import annotations

from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr


RC = "average both strands (default: as the model's metadata says, preprocess.reverse_complement; true for biomed's own)"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NamedSequence(_Strict):
    id: StrictStr = Field(max_length=256)
    sequence: StrictStr


class DnaRequest(_Strict):
    sequences: list[Union[StrictStr, NamedSequence]] = Field(min_length=1)
    model: Optional[StrictStr] = Field(default=None, max_length=200)
    reverse_complement: Optional[StrictBool] = Field(default=None, description=RC)


class Variant(_Strict):
    id: Optional[StrictStr] = Field(default=None, max_length=256)
    sequence: StrictStr
    position: StrictInt = Field(ge=0)
    ref: StrictStr = Field(min_length=1, max_length=1)
    alt: StrictStr = Field(min_length=1, max_length=1)


class VariantsRequest(_Strict):
    variants: list[Variant] = Field(min_length=1)
    model: Optional[StrictStr] = Field(default=None, max_length=200)
    reverse_complement: Optional[StrictBool] = Field(default=None, description=RC)


class ExplainRequest(_Strict):
    sequence: StrictStr = Field(min_length=1)
    model: Optional[StrictStr] = Field(default=None, max_length=200)
    task: Optional[StrictStr] = Field(default=None, max_length=200)
    reverse_complement: Optional[StrictBool] = Field(default=None, description=RC)


class ErrorBody(BaseModel):
    error: str = Field(description="short machine-readable code")
    detail: str = Field(description="what was wrong and what is accepted")


VALUES = "a regression model's values (in place of probabilities)"


class Window(BaseModel):
    start: int
    end: int
    probabilities: Optional[dict[str, float]] = None
    values: Optional[dict[str, float]] = Field(default=None, description=VALUES)


class DnaPrediction(BaseModel):
    id: str
    length: int
    probabilities: Optional[dict[str, float]] = None
    values: Optional[dict[str, float]] = Field(default=None, description=VALUES + "; the mean over the windows")
    windows: Optional[list[Window]] = None


class DnaResponse(BaseModel):
    model: str
    version: str
    predictions: list[DnaPrediction]


class FramePrediction(BaseModel):
    frame: int
    label: Optional[str] = Field(default=None, description="the most probable label (none for regression values)")
    probabilities: Optional[dict[str, float]] = None
    values: Optional[dict[str, float]] = Field(default=None, description=VALUES)


class ImageResponse(BaseModel):
    model: str
    version: str
    predictions: list[FramePrediction]
    input: dict


class SeriesResult(BaseModel):
    uid: str = Field(description="the Series Instance UID")
    instances: int = Field(description="instances in the result (a resent identical instance counts once)")
    aggregate: str = Field(description="how the instances combine: max or mean; volume: a volume model's one row "
                           "for the series assembled as one volume (every instance carries it)")
    label: Optional[str] = Field(default=None, description="the label of the highest combined probability (none for "
                                 "regression values)")
    probabilities: Optional[dict[str, float]] = None
    values: Optional[dict[str, float]] = Field(default=None, description=VALUES)
    source_instance: str = Field(description="the SOP Instance UID of the instance that drove the result: the "
                                 "highest value of the winning label (a regression model's first value)")
    source_frame: int = Field(description="its frame (0-based)")
    mixed: Optional[str] = Field(default=None, description="what the series mixes (sizes, modalities, SOP classes), "
                                 "as counts; every instance is in the result")


class SeriesInstance(BaseModel):
    sop_instance_uid: str
    instance_number: int
    predictions: list[FramePrediction]


class SeriesResponse(BaseModel):
    model: str
    version: str
    series: SeriesResult
    instances: list[SeriesInstance] = Field(description="each instance's predictions, in series order (Instance "
                                            "Number, then SOP Instance UID)")
    input: Optional[dict[str, Any]] = Field(default=None, description="a volume model's series as assembled: its "
                                            "slices, geometry, window and the model's grid")


class VariantScore(BaseModel):
    id: str
    ref: dict[str, float]
    alt: dict[str, float]
    diff: dict[str, float]
    log_odds_diff: Optional[dict[str, float]] = None
    log2_fold_change: Optional[dict[str, Optional[float]]] = Field(
        default=None, description="a regression model's log2(alt / ref) in place of log_odds_diff; null where a "
                                  "value is <= 0")


class VariantsResponse(BaseModel):
    model: str
    version: str
    variants: list[VariantScore]


class ExplainResponse(BaseModel):
    model: str
    version: str
    task: str
    probability: Optional[float] = None
    value: Optional[float] = Field(default=None, description="a regression model's value (in place of probability)")
    scores: list[list[float]]
    importance: list[float]


class OcclusionPeak(BaseModel):
    row: int
    column: int


class OcclusionMap(BaseModel):
    rows: int = Field(description="the map's height: the model input's")
    columns: int = Field(description="the map's width: the model input's")
    patch: int
    stride: int
    patches: int
    min: float
    max: float
    peak: OcclusionPeak
    values: list[list[float]] = Field(description="rows x columns probability drops of the explained label")


class PresentedGeometry(BaseModel):
    rows: int
    columns: int
    samples: int


class ImageExplainResponse(BaseModel):
    model: str
    version: str
    method: str
    frame: int
    label: str
    predicted: str
    probabilities: Optional[dict[str, float]] = None
    values: Optional[dict[str, float]] = Field(default=None, description=VALUES)
    map: OcclusionMap
    presented: PresentedGeometry
    input: dict
    image_png: Optional[str] = Field(default=None, description="with image=true: the presented frame, base64 PNG")


class VolumePeak(BaseModel):
    voxel: list[int] = Field(description="(depth, height, width) of the map's largest value")
    position_mm: list[float] = Field(description="that voxel's centre in the series' frame of reference (x, y, z mm, LPS)")


class VolumeOcclusionMap(BaseModel):
    shape: list[int] = Field(description="the model input's (depth, height, width)")
    patch: list[int]
    stride: list[int]
    patches: int
    min: float
    max: float
    peak: VolumePeak
    affine: list[list[float]] = Field(description="4x4: voxel (depth, height, width, 1) to patient mm (LPS)")
    values: list[list[list[float]]]


class VolumeExplainResponse(BaseModel):
    model: str
    version: str
    method: str
    label: str
    predicted: str
    probabilities: Optional[dict[str, float]] = None
    values: Optional[dict[str, float]] = Field(default=None, description=VALUES)
    map: VolumeOcclusionMap
    input: dict


class ModelsResponse(BaseModel):
    models: list[dict] = Field(description="one entry per loaded model (see docs/api.md)")


class PromoteRequest(_Strict):
    model: StrictStr = Field(min_length=1, max_length=200, description="NAME:VERSION to make the default "
                             "(NAME:latest: follow the newest export)")


class PromoteResponse(BaseModel):
    model: str
    default: str = Field(description="the default version every worker now takes up (latest: the newest export)")
    canary: dict[str, float] = Field(description="canary shares in force after the promote (a promote ends them)")
    serving: str = Field(description="the default version of the worker that answered, already swapped in")
    previous: str = Field(description="that worker's default before the promote")


# ---- Open Inference Protocol v2 (service/doors/v2.py; docs/api.md, "Open Inference Protocol v2")



class V2RequestInput(BaseModel):
    name: StrictStr
    shape: list[StrictInt]
    datatype: StrictStr
    parameters: Optional[dict] = None
    data: Optional[list] = Field(default=None, description="the tensor's elements, flat or nested in row-major "
                                 "order; absent when parameters.binary_data_size says they follow the JSON")


class V2RequestOutput(BaseModel):
    name: StrictStr
    parameters: Optional[dict] = None


class V2InferRequest(BaseModel):
    id: Optional[StrictStr] = None
    parameters: Optional[dict] = None
    inputs: list[V2RequestInput] = Field(min_length=1)
    outputs: Optional[list[V2RequestOutput]] = None


class V2ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: Optional[dict] = None
    data: Optional[list] = None


class V2InferResponse(BaseModel):
    model_name: str
    model_version: Optional[str] = None
    id: Optional[str] = None
    parameters: Optional[dict] = None
    outputs: list[V2ResponseOutput]


class V2Tensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class V2ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[V2Tensor]
    outputs: list[V2Tensor]
    labels: list[str] = Field(description="the output's column labels, in order (an extension; clients ignore it)")
    kind: str = Field(description="image or dna (an extension)")
    alternative_inputs: list[V2Tensor] = Field(description="the BYTES input that may be sent instead of the model "
                                               "input: whole files (image) or sequences (dna) (an extension)")
    alternative_outputs: list[V2Tensor] = Field(description="outputs besides probabilities that the alternative "
                                                "input produces (an extension)")


class V2ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class V2Live(BaseModel):
    live: bool


class V2Ready(BaseModel):
    ready: bool


class V2ModelReady(BaseModel):
    name: str
    ready: bool


class V2Error(BaseModel):
    error: str = Field(description="what was wrong and what is accepted (the whole message)")
