"""The API's request and response models: the OpenAPI contract of /v1 (served at /openapi.json)."""
from __future__ import annotations

from typing import Literal, Optional, Union

try:
    from pydantic import BaseModel, ConfigDict, Field, model_validator
except ImportError as e:  # the [service] extra; `imgsim serve` turns this into a one-line error
    raise ImportError("imgsim serve needs the [service] extra: pip install 'imgsim_fast[service]'") from e

__all__ = ["Filters", "SearchRequest", "PathRequest", "Near", "ImageOut", "AddOut", "CheckOut", "Hit",
           "SearchOut", "PageOut", "GroupOut", "GroupsOut", "ErrorOut", "Health"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Span(_Strict):
    min: Optional[Union[int, float, str]] = None
    max: Optional[Union[int, float, str]] = None


class Filters(_Strict):
    """The catalog's metadata filters (catalog/query.py), as `imgsim search` takes them."""

    tags: list[str] = Field(default_factory=list, description="must have every one of these tags")
    any_tags: list[str] = Field(default_factory=list, description="must have at least one of these tags")
    text: Optional[str] = Field(None, description="description contains this (case-insensitive)")
    after: Optional[str] = Field(None, description="taken on or after (ISO date)")
    before: Optional[str] = Field(None, description="taken before (ISO date)")
    camera: Optional[str] = Field(None, description="make/model contains this")
    where: dict[str, Union[int, float, str, Span]] = Field(
        default_factory=dict, description="field = value, or field within {min, max}, on any catalog field")


class SearchRequest(_Strict):
    """Search by a stored image (`id`) or by text (`text`, CLIP only)."""

    id: Optional[int] = None
    text: Optional[str] = Field(None, min_length=1, max_length=1000)
    k: int = Field(20, ge=1, le=1000)
    filters: Optional[Filters] = None

    @model_validator(mode="after")
    def _one_query(self):
        if (self.id is None) == (self.text is None):
            raise ValueError("give exactly one of 'id' and 'text'")
        return self


class PathRequest(_Strict):
    path: str = Field(..., min_length=1, max_length=4096, description="absolute path under an --allow-root folder")


class Near(BaseModel):
    """A stored file the project's pair test (jobs/dedup/detect.py, DEFAULTS) relates to the query."""

    id: int
    path: str
    tier: Literal["duplicate", "similar", "keeper"]
    rule: str = Field(description="exact, phash, flip, confirmed, embedding (duplicates); similar; keeper")
    description: str
    phash_distance: int
    flip_distance: int = Field(description="smallest distance to a flipped/rotated variant")
    transform: str
    cosine: Optional[float] = None


class ImageOut(BaseModel):
    id: int
    path: str
    digest: Optional[str]
    size: int
    width: Optional[int]
    height: Optional[int]
    format: Optional[str]
    taken: Optional[str] = None
    camera: Optional[str] = None
    description: Optional[str] = None
    tags: list[str] = Field(default_factory=list)
    hashes: dict[str, str] = Field(default_factory=dict, description="hex codes by kind")


class AddOut(BaseModel):
    image: ImageOut
    created: bool = Field(description="false when the same bytes (or the same server-side file) were already stored")
    duplicates: list[Near]
    similar: list[Near]


class CheckOut(BaseModel):
    digest: str
    width: Optional[int]
    height: Optional[int]
    format: Optional[str]
    hashes: dict[str, str]
    duplicates: list[Near]
    similar: list[Near]


class Hit(BaseModel):
    rank: int
    id: int
    path: str
    score: float = Field(description="higher is closer: cosine similarity, or 1 - hamming / bits")
    distance: Optional[int] = Field(None, description="Hamming distance (hash search)")


class SearchOut(BaseModel):
    method: str
    hits: list[Hit]


class PageOut(BaseModel):
    items: list[ImageOut]
    next_after: Optional[int] = Field(None, description="pass as ?after= for the next page; null at the end")


class GroupOut(BaseModel):
    tier: Literal["duplicate", "similar"]
    members: list[Near] = Field(description="the keeper (largest picture) first; each other member matched it")


class GroupsOut(BaseModel):
    total: int
    offset: int
    groups: list[GroupOut]


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorOut(BaseModel):
    error: ErrorBody


class Health(BaseModel):
    status: str
    files: int = 0
    embedding: Optional[str] = None
    text_search: bool = False
    # Files indexed without dedup's features (by `imgsim index`): left out of duplicate answers until they
    # are added again (the writer then stores what they lack).
    without_dedup_features: int = 0
