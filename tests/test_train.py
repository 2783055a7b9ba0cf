"""Training: batches, learning a sequential pattern, checkpoints and resume, the artifact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from movierec.data.prepared import load_prepared
from movierec.model.artifact import ArtifactError, load_artifact
from movierec.model.padding import left_pad
from movierec.serving.inference import top_k
from movierec.train.batches import TrainBatches
from movierec.train.evaluate import evaluate_model, evaluate_popularity
from movierec.train.trainer import TrainConfig, Trainer

SMALL = dict(seq_len=32, dim=32, negatives=8, batch_size=32, dropout=0.1, lr=5e-3, warmup_steps=10, threads=2)


def test_left_pad_keeps_the_most_recent_items() -> None:
    out = left_pad([np.array([1, 2, 3]), np.array([4, 5, 6, 7, 8, 9])], 4)
    assert out.tolist() == [[0, 1, 2, 3], [6, 7, 8, 9]]


def test_batches_cover_every_trainable_user_once_per_epoch(pattern_prepared: Path) -> None:
    data = load_prepared(pattern_prepared)
    batches = TrainBatches(data, batch_size=16, seq_len=8, seed=0, bucket=True)
    rows = list(batches.epoch())
    assert sum(len(b) for b in rows) == len(batches.users) == data.num_users
    assert all(b.shape[1] <= 9 for b in rows)
    # the training input never contains a validation or test target
    last_train = {int(data.train_sequence(u)[-1]) for u in range(data.num_users)}
    for b in rows:
        assert set(b[:, -1].tolist()) <= last_train


def test_bucketing_makes_short_batches_for_short_users(pattern_prepared: Path) -> None:
    data = load_prepared(pattern_prepared)
    widths = {
        bucket: [b.shape[1] for b in TrainBatches(data, 16, 200, 0, bucket=bucket).epoch()]
        for bucket in (True, False)
    }
    assert np.mean(widths[True]) < np.mean(widths[False])


def test_training_learns_the_pattern_and_beats_popularity(pattern_prepared: Path, pattern_model: Path) -> None:
    data = load_prepared(pattern_prepared)
    metrics = json.loads((pattern_model / "metrics.json").read_text())
    assert metrics["best_val_ndcg@10"] > 0.8
    assert metrics["best_val_ndcg@10"] > 3 * metrics["val_popularity"]["ndcg@10"]
    assert [row["step"] for row in metrics["curve"]] == [100, 200]
    for name in ("model.pt", "item_map.parquet", "manifest.json", "metrics.json", "training_curve.png"):
        assert (pattern_model / name).is_file()
    # the artifact reloads to the same quality and recommends the next movie in the cycle
    artifact = load_artifact(pattern_model)
    assert evaluate_model(artifact.model, data, "val")["ndcg@10"] == pytest.approx(metrics["val"]["ndcg@10"])
    history = data.history(0)
    movie_of = artifact.items.column("movie_id").to_pylist()
    best = top_k(artifact.model, [history], k=1)
    last_movie = movie_of[int(history[-1]) - 1]
    assert movie_of[int(best.items[0, 0]) - 1] == last_movie % 40 + 1


def test_resume_continues_the_same_run(pattern_prepared: Path, tmp_path: Path) -> None:
    data = load_prepared(pattern_prepared)
    cfg = TrainConfig(max_steps=40, eval_every_steps=20, lr_decay="none", **SMALL)
    Trainer(data, tmp_path / "m", TrainConfig.from_dict({**cfg.__dict__, "max_steps": 20})).fit(show_progress=False)
    resumed = Trainer(data, tmp_path / "m", cfg)
    assert resumed.resume()
    assert resumed.state.step == 20
    metrics = resumed.fit(show_progress=False)
    assert metrics["steps"] == 40
    assert [row["step"] for row in metrics["curve"]] == [20, 40]
    straight = Trainer(data, tmp_path / "straight", cfg).fit(show_progress=False)
    # resuming restores weights, optimiser and RNG state: same result as one uninterrupted run
    assert metrics["curve"][-1]["ndcg@10"] == pytest.approx(straight["curve"][-1]["ndcg@10"], abs=1e-6)
    assert [v for _, v in metrics["losses"]] == pytest.approx([v for _, v in straight["losses"]], rel=1e-5)


def test_early_stopping(pattern_prepared: Path, tmp_path: Path) -> None:
    data = load_prepared(pattern_prepared)
    cfg = TrainConfig(max_steps=400, eval_every_steps=5, patience=2, **{**SMALL, "lr": 1e-9, "warmup_steps": 1})
    metrics = Trainer(data, tmp_path / "m", cfg).fit(show_progress=False)
    assert metrics["steps"] < 400


def test_corrupt_or_missing_artifact_is_reported(pattern_prepared: Path, tmp_path: Path) -> None:
    data = load_prepared(pattern_prepared)
    Trainer(data, tmp_path / "m", TrainConfig(max_steps=2, eval_every_steps=2, **SMALL)).fit(show_progress=False)
    weights = tmp_path / "m" / "model.pt"
    weights.write_bytes(weights.read_bytes()[:-10] + b"corruption")
    with pytest.raises(ArtifactError, match="checksum"):
        load_artifact(tmp_path / "m")
    weights.unlink()
    with pytest.raises(ArtifactError, match="missing"):
        load_artifact(tmp_path / "m")
    with pytest.raises(ArtifactError, match="not found"):
        load_artifact(tmp_path / "nothing")


def test_popularity_baseline_ranks_by_training_counts(pattern_prepared: Path) -> None:
    data = load_prepared(pattern_prepared)
    metrics = evaluate_popularity(data, "val")
    assert metrics["users"] == 100
    assert 0 <= metrics["ndcg@10"] < 0.5


def test_metrics_json_is_valid(pattern_prepared: Path, tmp_path: Path) -> None:
    data = load_prepared(pattern_prepared)
    Trainer(data, tmp_path / "m", TrainConfig(max_steps=4, eval_every_steps=2, **SMALL)).fit(show_progress=False)
    saved = json.loads((tmp_path / "m" / "metrics.json").read_text())
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert saved["steps"] == 4 and len(saved["curve"]) == 2
    assert manifest["data"]["prepared_path"] == str(pattern_prepared.resolve())
    assert torch.load(tmp_path / "m" / "model.pt", weights_only=True)


def test_ranks_read_disjoint_shares_of_an_epoch(pattern_prepared: Path) -> None:
    data = load_prepared(pattern_prepared)
    batches = TrainBatches(data, batch_size=16, seq_len=8, seed=0)
    whole = [b.tobytes() for b in batches.epoch(3)]
    shares = [[b.tobytes() for b in batches.epoch(3, rank=r, world=2)] for r in (0, 1)]
    assert len(shares[0]) == len(shares[1]) == len(whole) // 2  # same number of steps on every rank
    assert not set(shares[0]) & set(shares[1])
    assert set(shares[0]) | set(shares[1]) <= set(whole)
    # resuming a rank mid-epoch skips its own batches
    assert [b.tobytes() for b in batches.epoch(3, skip=2, rank=1, world=2)] == shares[1][2:]
