"""Train gSASRec on a prepared dataset: progress, validation, early stopping, checkpoints, torchrun/DDP."""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from torch.nn.parallel import DistributedDataParallel

from movierec.data.prepared import PreparedData
from movierec.model.artifact import save_artifact
from movierec.model.gsasrec import GSASRec, ModelConfig
from movierec.train.batches import TrainBatches
from movierec.train.distributed import broadcast_object, gather_objects, init_distributed, rank_device
from movierec.train.evaluate import evaluate_model, evaluate_popularity
from movierec.train.objective import Objective

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    # Defaults: the best configuration measured on ML-1M on a 2-core CPU (docs/benchmarks.md, "Quality on ML-1M"):
    # the gSASRec paper's model shape, trained with the full softmax (SASRec+), dropout 0.2, lr 2e-3.
    # model
    seq_len: int = 200
    dim: int = 128
    blocks: int = 2
    heads: int = 1
    dropout: float = 0.2
    share_embeddings: bool = False
    # objective (train/objective.py): gbce | ce | sampled-softmax; negatives per sequence | position | batch.
    # The paper's gSASRec: loss="gbce", negatives=256, gbce_t=0.75 (with dropout 0.5)
    loss: str = "ce"
    negatives: int = 256
    negative_sharing: str = "sequence"
    gbce_t: float = 0.75
    # optimisation
    batch_size: int = 128
    lr: float = 2e-3
    warmup_steps: int = 100
    lr_decay: str = "cosine"  # cosine to 0 over the step/time budget, or "none"
    weight_decay: float = 0.0
    bucket: bool = True
    crop: str = "last"
    # budget and bookkeeping
    max_steps: int | None = None
    max_minutes: float | None = None
    eval_every_steps: int = 100
    patience: int = 10  # evaluations without improvement before stopping
    checkpoint_minutes: float = 5.0
    seed: int = 42
    device: str = "cpu"
    threads: int | None = None

    def model_config(self, num_items: int) -> ModelConfig:
        return ModelConfig(
            num_items=num_items,
            seq_len=self.seq_len,
            dim=self.dim,
            blocks=self.blocks,
            heads=self.heads,
            dropout=self.dropout,
            share_embeddings=self.share_embeddings,
        )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of `epoch` already trained on
    elapsed: float = 0.0  # seconds of training so far (resumed runs continue the clock)
    best_metric: float = -1.0
    best_step: int = 0
    stale_evals: int = 0
    curve: list[dict[str, float]] = field(default_factory=list)  # one row per evaluation
    losses: list[tuple[int, float]] = field(default_factory=list)


def seed_everything(seed: int) -> np.random.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def batch_loss(
    model: GSASRec, batch: torch.Tensor, negatives: int, beta: float | None = None, *, loss: str = "gbce",
    sharing: str = "sequence", gbce_t: float = 0.75, norm: float | None = None,
) -> torch.Tensor:
    """The loss of one [B, N + 1] batch (see train/objective.py); `beta` overrides the one from t."""
    objective = Objective(model, loss, negatives, sharing, gbce_t)
    if beta is not None:
        objective.beta = beta
    return objective(batch, norm)


def lr_factor(cfg: TrainConfig, step: int, progress: float) -> float:
    warm = min(1.0, (step + 1) / max(1, cfg.warmup_steps))
    if cfg.lr_decay == "cosine" and progress > 0:
        return warm * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return warm


class Trainer:
    """Single process, or one rank of a `torchrun` job (DDP; rank 0 validates and writes files)."""

    def __init__(self, data: PreparedData, out: str | Path, cfg: TrainConfig) -> None:
        self.world = init_distributed(cfg.device)
        cfg = TrainConfig.from_dict({**asdict(cfg), "device": rank_device(cfg.device, self.world)})
        self.data, self.out, self.cfg = data, Path(out), cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.rng = seed_everything(cfg.seed)
        self.model = GSASRec(cfg.model_config(data.num_items)).to(cfg.device)
        self.objective = Objective(self.model, cfg.loss, cfg.negatives, cfg.negative_sharing, cfg.gbce_t)
        self.step_fn: torch.nn.Module = self.objective
        if self.world.distributed:  # DDP broadcasts rank 0's initial weights, then all-reduces gradients
            ids = [self.world.local_rank] if cfg.device.startswith("cuda") else None
            self.step_fn = DistributedDataParallel(self.objective, device_ids=ids)
            torch.manual_seed(cfg.seed + self.world.rank)  # each rank its own dropout masks and negatives
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98)
        )
        self.batches = TrainBatches(data, cfg.batch_size, cfg.seq_len, cfg.seed, bucket=cfg.bucket, crop=cfg.crop)
        self.norm = self.batches.mean_positions
        self.beta = self.objective.beta
        self.state = TrainState()
        self.best_weights = copy.deepcopy(self.model.state_dict())

    # -- checkpoints -------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.out / "checkpoint.pt"

    def save_checkpoint(self) -> None:
        """Rank 0 writes; under DDP every rank must call this at the same step (it gathers RNG states)."""
        rng_states = gather_objects(torch.get_rng_state(), self.world)
        if not self.world.is_main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.checkpoint_path.with_suffix(".tmp")
        torch.save(
            {
                "config": asdict(self.cfg),
                "model": self.model.state_dict(),
                "best_weights": self.best_weights,
                "optimizer": self.optimizer.state_dict(),
                "state": asdict(self.state),
                "torch_rng": rng_states[0],
                "rank_rng": rng_states,
                "world_size": self.world.size,
                "numpy_rng": self.rng.bit_generator.state,
            },
            tmp,
        )
        tmp.replace(self.checkpoint_path)
        log.info("checkpoint saved at step %d (%s)", self.state.step, self.checkpoint_path)

    def resume(self) -> bool:
        """Continue from OUT/checkpoint.pt; under DDP rank 0 reads it and sends it to the others."""
        ckpt = None
        if self.world.is_main:
            if self.checkpoint_path.is_file():
                ckpt = torch.load(self.checkpoint_path, map_location="cpu", weights_only=False)
            else:
                log.info("no checkpoint at %s; starting fresh", self.checkpoint_path)
        ckpt = broadcast_object(ckpt, self.world)
        if ckpt is None:
            return False
        if ckpt.get("world_size", 1) != self.world.size:
            raise ValueError(
                f"the checkpoint was written by {ckpt.get('world_size', 1)} processes; resume it with as many "
                f"(this run has {self.world.size}): the position in the epoch counts each rank's batches"
            )
        self.model.load_state_dict(ckpt["model"])
        self.best_weights = ckpt["best_weights"]
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.state = TrainState(**ckpt["state"])
        torch.set_rng_state(ckpt.get("rank_rng", [ckpt["torch_rng"]])[self.world.rank])
        self.rng.bit_generator.state = ckpt["numpy_rng"]
        log.info("resumed from step %d (%.1f min trained)", self.state.step, self.state.elapsed / 60)
        return True

    # -- the loop ----------------------------------------------------------------------------
    def progress(self) -> float:
        parts = []
        if self.cfg.max_steps:
            parts.append(self.state.step / self.cfg.max_steps)
        if self.cfg.max_minutes:
            parts.append(self.state.elapsed / (60 * self.cfg.max_minutes))
        return max(parts, default=0.0)

    def validate(self) -> dict[str, float]:
        metrics = evaluate_model(self.model, self.data, "val")
        st = self.state
        row = {"step": st.step, "minutes": st.elapsed / 60, **metrics}
        st.curve.append(row)
        if metrics["ndcg@10"] > st.best_metric:
            st.best_metric, st.best_step, st.stale_evals = metrics["ndcg@10"], st.step, 0
            self.best_weights = copy.deepcopy(self.model.state_dict())
        else:
            st.stale_evals += 1
        log.info(
            "step %d (%.1f min): val NDCG@10 %.4f Recall@10 %.4f (best %.4f at step %d)",
            st.step, st.elapsed / 60, metrics["ndcg@10"], metrics["recall@10"], st.best_metric, st.best_step,
        )
        return metrics

    def _agree(self, done: bool, checkpoint: bool) -> tuple[bool, bool]:
        """Rank 0's decisions (stop, checkpoint) and clock on every rank: one small broadcast per step."""
        if not self.world.distributed:
            return done, checkpoint
        flags = torch.tensor([float(done), float(checkpoint), self.state.elapsed], dtype=torch.float64,
                             device=self.cfg.device)
        dist.broadcast(flags, src=0)
        self.state.elapsed = float(flags[2])
        return bool(flags[0]), bool(flags[1])

    def fit(self, show_progress: bool = True) -> dict[str, Any]:
        cfg, st, main = self.cfg, self.state, self.world.is_main
        self.model.train()
        last_ckpt = time.monotonic()
        start = time.monotonic() - st.elapsed
        total = cfg.max_steps or None
        columns = [
            TextColumn("[bold]train"), BarColumn(), TextColumn("step {task.completed}"),
            TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[rate]:.0f} seq/s"),
            TextColumn("val NDCG@10 {task.fields[ndcg]:.4f}"), TimeElapsedColumn(),
        ]
        done = False
        window_loss, window_seqs, window_start = [], 0, time.monotonic()
        with Progress(*columns, disable=not (show_progress and main), transient=False) as bar:
            task = bar.add_task("train", total=total, completed=st.step, loss=0.0, rate=0.0,
                                ndcg=max(st.best_metric, 0.0))
            while not done:
                for batch_np in self.batches.epoch(st.epoch, st.batch_in_epoch, self.world.rank, self.world.size):
                    for group in self.optimizer.param_groups:
                        group["lr"] = cfg.lr * lr_factor(cfg, st.step, self.progress())
                    batch = torch.from_numpy(batch_np).to(cfg.device)
                    loss = self.step_fn(batch, self.norm)
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    self.optimizer.step()
                    st.step += 1
                    st.batch_in_epoch += 1
                    st.elapsed = time.monotonic() - start
                    window_loss.append(loss.item())
                    window_seqs += batch.shape[0] * self.world.size
                    if st.step % 20 == 0:
                        now = time.monotonic()
                        mean_loss = float(np.mean(window_loss))
                        st.losses.append((st.step, mean_loss))
                        bar.update(task, completed=st.step, loss=mean_loss,
                                   rate=window_seqs / max(1e-9, now - window_start))
                        window_loss, window_seqs, window_start = [], 0, now
                    if main and st.step % cfg.eval_every_steps == 0:
                        self.validate()
                        bar.update(task, ndcg=st.best_metric)
                        if st.stale_evals >= cfg.patience:
                            log.info("early stop: no improvement in %d evaluations", cfg.patience)
                            done = True
                    if (cfg.max_steps and st.step >= cfg.max_steps) or (
                        cfg.max_minutes and st.elapsed >= 60 * cfg.max_minutes
                    ):
                        done = True
                    done, checkpoint = self._agree(done, time.monotonic() - last_ckpt >= 60 * cfg.checkpoint_minutes)
                    if checkpoint:
                        self.save_checkpoint()
                        last_ckpt = time.monotonic()
                    if done:
                        break
                else:
                    st.epoch, st.batch_in_epoch = st.epoch + 1, 0
        if main and (not st.curve or st.curve[-1]["step"] != st.step):
            self.validate()
        self.save_checkpoint()
        if not main:
            return {"steps": st.step, "minutes": st.elapsed / 60, "losses": st.losses}
        return self.finish()

    def finish(self) -> dict[str, Any]:
        """Restore the best weights, write the artifact, metrics and the training-curve plot."""
        self.model.load_state_dict(self.best_weights)
        self.model.eval()
        st = self.state
        metrics = {
            "loss": self.cfg.loss,
            "best_val_ndcg@10": st.best_metric,
            "best_step": st.best_step,
            "steps": st.step,
            "minutes": st.elapsed / 60,
            "val": evaluate_model(self.model, self.data, "val"),
            "val_popularity": evaluate_popularity(self.data, "val"),
            "curve": st.curve,
            "losses": st.losses,
        }
        save_artifact(
            self.out, self.model, self.data.items,
            train_config=asdict(self.cfg),
            data_manifest={**self.data.manifest, "prepared_path": str(Path(self.data.root).resolve())},
            metrics={k: v for k, v in metrics.items() if k not in ("curve", "losses")},
        )
        (self.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        plot_training_curve(metrics, self.out / "training_curve.png")
        return metrics


def plot_training_curve(metrics: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    curve = metrics["curve"]
    ax1.plot([r["minutes"] for r in curve], [r["ndcg@10"] for r in curve], marker=".", label="gSASRec (val)")
    ax1.axhline(metrics["val_popularity"]["ndcg@10"], color="grey", ls="--", label="most popular")
    ax1.set_xlabel("training minutes")
    ax1.set_ylabel("NDCG@10")
    ax1.set_title("Validation NDCG@10 (full ranking)")
    ax1.legend()
    losses = metrics["losses"]
    if losses:
        ax2.plot([s for s, _ in losses], [v for _, v in losses])
    ax2.set_xlabel("step")
    ax2.set_ylabel(f"training loss ({metrics.get('loss', 'gbce')})")
    ax2.set_yscale("log")
    ax2.set_title("Training loss")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
