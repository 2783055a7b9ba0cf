"""`torchrun` with 2 CPU processes (gloo): DDP keeps the ranks identical, the loss falls, resume works."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

WORKER = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import torch
    from movierec.data.prepared import load_prepared
    from movierec.train.trainer import TrainConfig, Trainer

    data, out = load_prepared(sys.argv[1]), Path(sys.argv[2])
    small = dict(seq_len=16, dim=16, negatives=8, batch_size=16, dropout=0.1, lr=5e-3, warmup_steps=5, threads=1,
                 eval_every_steps=30, checkpoint_minutes=1e6, lr_decay="none")
    first = Trainer(data, out / "model", TrainConfig(max_steps=30, **small))
    first.fit(show_progress=False)
    again = Trainer(data, out / "model", TrainConfig(max_steps=60, **small))
    resumed = again.resume()
    metrics = again.fit(show_progress=False)
    rank = again.world.rank
    torch.save(again.model.state_dict(), out / f"rank{rank}.pt")
    (out / f"rank{rank}.json").write_text(json.dumps(
        {"world": again.world.size, "resumed": resumed, "steps": metrics["steps"], "losses": metrics["losses"],
         "epoch_batches": len(list(again.batches.epoch(0, 0, rank, again.world.size))), "all_batches": len(again.batches)}
    ))
    """
)


def test_two_processes_train_one_model(pattern_prepared: Path, tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(script), str(pattern_prepared), str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**_env(), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world"] == 2 and r["resumed"] and r["steps"] == 60 for r in ranks)
    # each rank reads its own half of every epoch
    assert ranks[0]["epoch_batches"] == ranks[1]["epoch_batches"] == ranks[0]["all_batches"] // 2
    # identical weights on both ranks after the steps: rank 0's are in the final checkpoint (its model then
    # takes the best validated weights for the artifact), rank 1's model is left at the last step
    checkpoint = torch.load(tmp_path / "model" / "checkpoint.pt", weights_only=False)
    w0, w1 = checkpoint["model"], torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert w0.keys() == w1.keys()
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    # ... which moved away from the initialisation, and the loss fell
    losses = [v for _, v in ranks[0]["losses"]]
    assert losses[-1] < 0.8 * losses[0]
    # rank 0 alone wrote the artifact and the checkpoint
    model = tmp_path / "model"
    assert (model / "model.pt").is_file() and (model / "checkpoint.pt").is_file()
    metrics = json.loads((model / "metrics.json").read_text())
    assert metrics["steps"] == 60 and [row["step"] for row in metrics["curve"]] == [30, 60]
    assert checkpoint["world_size"] == 2


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT")}
