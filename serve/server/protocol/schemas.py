"""Pydantic models that document the wire formats in OpenAPI (requests are parsed by orjson)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    error: str = Field(description="what is wrong and how to fix it")


class V1PredictRequest(BaseModel):
    instances: list[list[float]] = Field(description="one list of numbers per sample (raw features)")
    top_k: int | None = Field(None, ge=0, description="return the k most likely classes' "
                              "calibrated probabilities")
    id: str | None = None


class V1Prediction(BaseModel):
    label: int
    class_name: str
    score: float = Field(description="confidence score of the calibrated score function")
    reject: bool = Field(description="true = deferred: the score is below the certified threshold")
    probabilities: dict[str, float] | None = None


class V1PredictResponse(BaseModel):
    id: str
    model_name: str
    model_version: str
    predictions: list[V1Prediction]


class V2Tensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str = Field(description="FP32 for the model input")
    data: list[Any] | None = Field(None, description="row-major values (flat or nested)")
    parameters: dict[str, Any] | None = Field(None, description="binary_data_size for binary inputs")


class V2RequestedOutput(BaseModel):
    name: str = Field(description="logits, label, score, reject, probabilities or class_name")
    parameters: dict[str, Any] | None = None


class V2InferRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[V2Tensor]
    outputs: list[V2RequestedOutput] | None = None


class V2OutputTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any] | None = None
    parameters: dict[str, Any] | None = None


class V2InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str
    outputs: list[V2OutputTensor]


class V2TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class V2ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[V2TensorMetadata]
    outputs: list[V2TensorMetadata]
    provider: str
    calibration: dict[str, Any]
    class_names: list[str]


class V2ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ModelReady(BaseModel):
    name: str
    version: str | None = None
    ready: bool


class Health(BaseModel):
    status: str
    ready: bool | None = None
    models: list[dict[str, Any]] | None = None


REQUEST_MODELS = (V1PredictRequest, V2InferRequest)
