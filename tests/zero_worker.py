"""One rank of a tiny DeepSpeed ZeRO-2 run on the CPU (gloo), for tests/test_zero_checkpoint.py.

    python tests/zero_worker.py OUT_DIR RANK WORLD_SIZE PORT

Trains a small model (a frozen first layer, parameter sizes that force ZeRO's padding) for three
bf16 steps, saves a DeepSpeed checkpoint to ``OUT_DIR/ckpt`` (tag ``checkpoint``) and writes
``OUT_DIR/master-rank<r>.pt``: this rank's float32 master partition as the optimizer holds it.
"""
from __future__ import annotations

import os
import sys

import torch


def main(out_dir: str, rank: int, world_size: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.GELU(), torch.nn.Linear(7, 4), torch.nn.Linear(4, 5))  # 57 trained values: padded
    model[0].requires_grad_(False)
    model.register_buffer("scale", torch.tensor([0.5, 2.0]))
    config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 2}, "bf16": {"enabled": True},
              "zero_allow_untested_optimizer": True}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    generator = torch.Generator().manual_seed(rank)
    for _ in range(3):
        x = torch.randn(4, 5, generator=generator).to(torch.bfloat16)
        loss = engine(x).float().pow(2).mean()
        engine.backward(loss)
        engine.step()
    engine.save_checkpoint(os.path.join(out_dir, "ckpt"), tag="checkpoint")
    torch.save([group.detach().clone() for group in optimizer.single_partition_of_fp32_groups],
               os.path.join(out_dir, f"master-rank{rank}.pt"))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
