"""Request and response bodies of the HTTP API (the published contract; pydantic v2 validates every field)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from movierec.index.base import Filters

Method = Literal["torchserve", "faiss", "qdrant", "popular"]
METHOD_DESCRIPTION = (
    "torchserve: exact scoring of every movie by the model (on TorchServe/KServe when TORCHSERVE_HOST is set, "
    "else in-process; `served_by` says which); faiss: the model's user vector, top-k from the FAISS index; "
    "qdrant: the same vector, Qdrant search with the filters inside the engine; popular: most rated movies."
)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)


class FilterFields(Strict):
    genres: list[str] | None = Field(None, description="Keep movies with any of these genres.", max_length=50)
    year_min: int | None = Field(None, ge=1800, le=2100)
    year_max: int | None = Field(None, ge=1800, le=2100)
    min_rating: float | None = Field(None, ge=0.0, le=5.0, description="Minimum mean rating of the movie.")
    exclude_rated: bool = Field(True, description="Leave out movies the user already rated.")

    def filters(self) -> Filters:
        return Filters(genres=tuple(self.genres or ()), year_min=self.year_min, year_max=self.year_max,
                       min_rating=self.min_rating)


class RecommendRequest(FilterFields):
    user_id: int = Field(..., ge=0, examples=[1])
    k: int = Field(10, ge=1, le=1000, description="How many movies (1-1000).")
    method: Method = Field("torchserve", description=METHOD_DESCRIPTION)


class RecommendBatchRequest(FilterFields):
    user_ids: list[int] = Field(..., min_length=1, max_length=1000, examples=[[1, 2, 3, 4, 5]])
    k: int = Field(10, ge=1, le=1000)
    method: Method = Field("torchserve", description=METHOD_DESCRIPTION)

    @field_validator("user_ids")
    @classmethod
    def non_negative(cls, ids: list[int]) -> list[int]:
        if any(u < 0 for u in ids):
            raise ValueError("user ids must be non-negative")
        return ids


class UpdateUserRequest(Strict):
    user_id: int = Field(..., ge=0)
    movie_id: int = Field(..., ge=1)
    rating: float = Field(..., ge=0.5, le=5.0, description="0.5 to 5.0 in half steps.")
    timestamp: int | None = Field(None, ge=0, description="Unix seconds; default now.")

    @field_validator("rating")
    @classmethod
    def half_steps(cls, rating: float) -> float:
        if round(rating * 2) != rating * 2:
            raise ValueError("rating must be in half steps (0.5, 1.0, ..., 5.0)")
        return rating


class SearchRequest(Strict):
    query: str = Field(..., min_length=1, max_length=200)
    limit: int = Field(20, ge=1, le=1000)


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
