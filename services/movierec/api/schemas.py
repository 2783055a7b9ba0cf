"""Request and response bodies of the HTTP API (the published contract; pydantic v2 validates every field).

Every string and integer is bounded, and types are JSON's (`true` is not 1, `"1"` is not 1, 1.0 is 1): ids
are at most 2^53 - 1 (exact in any JSON reader), timestamps are Unix seconds up to 2100-01-01. What the
JSON schema cannot say (year_min <= year_max; a genre must be one of the catalogue's) is checked too,
and also answers 422 with a `detail` string naming the field.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, field_validator, model_validator

from movierec.index.base import Filters

MAX_ID = 2**53 - 1  # exact in a JSON number everywhere (JavaScript, JSON Schema validators); SQLite's limit is 2^63 - 1
MAX_TIMESTAMP = 4_102_444_800  # 2100-01-01T00:00:00Z


def json_integer(value: object) -> object:
    """What JSON Schema calls an integer: 7 or 7.0, never true or "7" (pydantic's lax mode takes both)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be an integer")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("must be an integer")
        return int(value)
    return value


Int = Annotated[int, BeforeValidator(json_integer)]
# the bounds first: after the validator pydantic would publish them as "ge"/"le" instead of minimum/maximum
Id = Annotated[int, Field(ge=0, le=MAX_ID), BeforeValidator(json_integer)]
Year = Annotated[int, Field(ge=1800, le=2100), BeforeValidator(json_integer)]
Timestamp = Annotated[int, Field(ge=0, le=MAX_TIMESTAMP), BeforeValidator(json_integer)]
Genre = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class ErrorResponse(BaseModel):
    """Every 4xx and 503: one line naming the field or the reason."""

    detail: str = Field(..., examples=["k: Input should be less than or equal to 1000"])

Method = Literal["torchserve", "faiss", "qdrant", "popular"]
METHOD_DESCRIPTION = (
    "torchserve: exact scoring of every movie by the model (on TorchServe/KServe when TORCHSERVE_HOST is set, "
    "else in-process; `served_by` says which); faiss: the model's user vector, top-k from the FAISS index; "
    "qdrant: the same vector, Qdrant search with the filters inside the engine; popular: most rated movies."
)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)


class FilterFields(Strict):
    genres: list[Genre] | None = Field(None, max_length=50, description=(
        "Keep movies with any of these genres; each must be a genre of the catalogue (else 422 naming it)."))
    year_min: Year | None = Field(None, description="At most year_max.")
    year_max: Year | None = None
    min_rating: Annotated[float, Field(ge=0.0, le=5.0, strict=True)] | None = Field(
        None, description="Minimum mean rating of the movie.")
    exclude_rated: bool = Field(True, strict=True, description="Leave out movies the user already rated.")

    @model_validator(mode="after")
    def years_in_order(self) -> FilterFields:
        if self.year_min is not None and self.year_max is not None and self.year_min > self.year_max:
            raise ValueError(f"year_min {self.year_min} is after year_max {self.year_max}")
        return self

    def filters(self) -> Filters:
        return Filters(genres=tuple(self.genres or ()), year_min=self.year_min, year_max=self.year_max,
                       min_rating=self.min_rating)


class RecommendRequest(FilterFields):
    user_id: Id = Field(..., examples=[1])
    k: Int = Field(10, ge=1, le=1000, description="How many movies (1-1000).")
    method: Method = Field("torchserve", description=METHOD_DESCRIPTION)


class RecommendBatchRequest(FilterFields):
    user_ids: list[Id] = Field(..., min_length=1, max_length=1000, examples=[[1, 2, 3, 4, 5]], description=(
        "1 to 1000 users (the operator may allow fewer: BATCH_MAX_USERS); computed in slices between which "
        "single requests are served."))
    k: Int = Field(10, ge=1, le=100, description="How many movies per user (1-100: a batch answers at most "
                   "100,000 movies).")
    method: Method = Field("torchserve", description=METHOD_DESCRIPTION)


class UpdateUserRequest(Strict):
    user_id: Id
    movie_id: Int = Field(..., ge=1, le=MAX_ID, description="A movie of the store (else 404).")
    rating: float = Field(..., ge=0.5, le=5.0, multiple_of=0.5, strict=True, description="0.5 to 5.0 in half steps.")
    timestamp: Timestamp | None = Field(None,
                                  description="Unix seconds, up to 2100-01-01; default now.")

    @field_validator("rating")
    @classmethod
    def half_steps(cls, rating: float) -> float:
        if round(rating * 2) != rating * 2:
            raise ValueError("rating must be in half steps (0.5, 1.0, ..., 5.0)")
        return rating


class SearchRequest(Strict):
    query: str = Field(..., min_length=1, max_length=200)
    limit: Int = Field(20, ge=1, le=1000)


class Movie(BaseModel):
    movie_id: int
    title: str | None
    year: int | None = None
    genres: list[str] = []


class RecommendedMovie(Movie):
    score: float
    because: list[str] = Field([], description="Up to 3 movies from the history the model attended to most.")


class RecommendResponse(BaseModel):
    user_id: int
    strategy: Literal["sequence", "popular"]
    method: Method
    served_by: str = Field(..., description="in-process, torchserve, faiss or qdrant")
    model_version: str | None
    index_version: str | None
    cached: bool
    items: list[RecommendedMovie]


class RecommendBatchResponse(BaseModel):
    results: list[RecommendResponse]


class UpdateUserResponse(BaseModel):
    user_id: int
    movie_id: int
    rating: float
    n_ratings: int
    acknowledged: bool = True


class MovieStats(Movie):
    rating_count: int | None = None
    rating_mean: float | None = None


class SearchResponse(BaseModel):
    query: str
    results: list[MovieStats]


class PopularResponse(BaseModel):
    results: list[MovieStats]


class GenreCount(BaseModel):
    genre: str
    count: int


class HistoryItem(Movie):
    rating: float | None = Field(..., description="None for loaded data without rating values.")
    timestamp: int = Field(..., description="Unix seconds.")


class UserHistoryResponse(BaseModel):
    user_id: int
    items: list[HistoryItem] = Field(..., description="Newest first.")


class UserStatsResponse(BaseModel):
    user_id: int
    n_ratings: int
    mean_rating: float | None = Field(..., description="None when no rating has a value.")
    first_timestamp: int = Field(..., description="Unix seconds of the earliest rating ever written.")
    last_timestamp: int = Field(..., description="Unix seconds of the latest rating ever written.")
    top_genres: list[GenreCount] = Field(..., description="Most rated genres, most first (ties by name).")
