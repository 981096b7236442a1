"""Worker for the two-process CPU test in test_training.py.

It lives in its own plain module so that `torch.multiprocessing.spawn` can import it in the child processes
(test modules are imported by pytest under names the children cannot import).
"""

import json
import os
from pathlib import Path


def train_on_rank(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world_size),
    )
    import torch
    import torch.nn.functional as F
    from safetensors.torch import save_file
    from torch import nn

    from synthesis_core.training import BaseTrainer

    torch.set_num_threads(1)
    out = Path(out_dir)
    trainer = BaseTrainer(cpu=True, seed=0, results_folder=out / "checkpoints", gradient_accumulate_every=2)
    torch.manual_seed(rank)  # different initial weights per rank: DDP must broadcast rank 0's
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    net = trainer.add_model("net", model, lr=1e-2, max_grad_norm=1.0, ema_kwargs={"update_after_step": 0})

    data = torch.Generator().manual_seed(100 + rank)  # every rank sees different data
    losses = []
    for _ in range(5):
        for _ in range(2):  # gradients all-reduced in the second micro-batch only
            with trainer.accumulate("net"):
                x = torch.randn(4, 4, generator=data)
                loss = F.mse_loss(net(x), x.sum(-1, keepdim=True))
                trainer.backward(loss, "net")
        trainer.step("net")
        losses.append(loss.item())

    main_only = out / "main-only.safetensors"
    if trainer.is_main:  # saving from the main process alone holds no collective operation: no deadlock
        trainer.save(main_only)
    saved = trainer.save()  # every process calls it: the main one writes, the other one its RNG states
    torch.rand(7)
    trainer.load("latest")  # and every process can read it right after
    rng_after_load = torch.rand(2).tolist()  # each process got its own RNG back
    weights = {k: v.detach().clone().contiguous() for k, v in trainer.unwrap("net").state_dict().items()}
    save_file(weights, str(out / f"rank{rank}.safetensors"))
    save_file({k: v.contiguous() for k, v in initial.items()}, str(out / f"initial{rank}.safetensors"))

    # a step after only one of the two micro-batches would leave the processes with different gradients
    with trainer.accumulate("net"):
        trainer.backward(F.mse_loss(net(x), x.sum(-1, keepdim=True)), "net")
    try:
        trainer.step("net")
        misuse = None
    except RuntimeError:
        misuse = "RuntimeError"
    (out / f"rank{rank}.json").write_text(
        json.dumps(
            {
                "num_processes": trainer.num_processes,
                "distributed_type": str(trainer.accelerator.distributed_type),
                "is_main": trainer.is_main,
                "saved": str(saved),
                "steps": trainer.step_counts,
                "losses": losses,
                "accumulate_misuse": misuse,
                "main_only_saved": main_only.is_file(),
                "rng_after_load": rng_after_load,
            }
        )
    )
    trainer.wait_for_everyone()
    torch.distributed.destroy_process_group()
