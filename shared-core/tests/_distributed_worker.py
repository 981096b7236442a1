"""Worker for the two-process CPU test in test_training.py.

It lives in its own plain module so that `torch.multiprocessing.spawn` can import it in the child processes
(test modules are imported by pytest under names the children cannot import).
"""
import json
import os
from pathlib import Path


def train_on_rank(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size))
    import torch
    import torch.nn.functional as F
    from safetensors.torch import save_file
    from torch import nn

    from synthesis_core.training import BaseTrainer

    torch.set_num_threads(1)
    out = Path(out_dir)
    trainer = BaseTrainer(cpu=True, seed=0, results_folder=out / "checkpoints")
    torch.manual_seed(rank)  # different initial weights per rank: DDP must broadcast rank 0's
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    net = trainer.add_model("net", model, lr=1e-2, max_grad_norm=1.0, ema_kwargs={"update_after_step": 0})

    data = torch.Generator().manual_seed(100 + rank)  # every rank sees different data
    losses = []
    for _ in range(5):
        x = torch.randn(4, 4, generator=data)
        loss = F.mse_loss(net(x), x.sum(-1, keepdim=True))
        trainer.backward(loss, "net")
        trainer.step("net")
        losses.append(loss.item())

    saved = trainer.save()  # every process calls it, the main one writes
    trainer.load("latest")  # and every process can read it right after
    weights = {k: v.detach().clone().contiguous() for k, v in trainer.unwrap("net").state_dict().items()}
    save_file(weights, str(out / f"rank{rank}.safetensors"))
    save_file({k: v.contiguous() for k, v in initial.items()}, str(out / f"initial{rank}.safetensors"))
    (out / f"rank{rank}.json").write_text(json.dumps({
        "num_processes": trainer.num_processes,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "is_main": trainer.is_main,
        "saved": str(saved),
        "steps": trainer.steps,
        "losses": losses,
    }))
    trainer.wait_for_everyone()
    torch.distributed.destroy_process_group()
