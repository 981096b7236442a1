"""Worker for the two-process CPU test in test_trainer.py (a plain module so spawned children can import it)."""

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
    from safetensors.torch import save_file

    from phenaki_pytorch import CViViT, CViViTTrainer, MaskGit, Phenaki, PhenakiTrainer

    torch.set_num_threads(1)
    out = Path(out_dir)
    torch.manual_seed(rank)  # different initial weights per rank: DDP must broadcast rank 0's
    cvivit = CViViT(
        dim=16,
        codebook_size=32,
        image_size=16,
        patch_size=8,
        spatial_depth=1,
        temporal_depth=1,
        heads=2,
        dim_head=8,
        discr_base_dim=8,
        discr_layers=3,
    )
    videos = torch.rand(8, 3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    trainer = CViViTTrainer(
        cvivit,
        dataset=list(videos),
        batch_size=2,
        num_train_steps=3,
        cpu=True,
        seed=rank,
        apply_grad_penalty_every=2,
        save_results_every=None,
        save_model_every=None,
        results_folder=out / "cvivit",
    )
    trainer.train()

    maskgit = MaskGit(num_tokens=32, max_seq_len=16, dim=16, depth=1, heads=2, dim_head=8, dim_context=8)
    phenaki = Phenaki(trainer.unwrap("cvivit"), maskgit, text_encoder_name=None)
    items = [(video, torch.randn(3, 8), torch.ones(3, dtype=torch.bool)) for video in videos]
    phenaki_trainer = PhenakiTrainer(
        phenaki,
        dataset=items,
        batch_size=2,
        num_train_steps=2,
        cpu=True,
        seed=rank,
        save_results_every=None,
        save_model_every=None,
        results_folder=out / "phenaki",
    )
    phenaki_trainer.train()

    weights = {f"cvivit.{k}": v for k, v in trainer.unwrap("cvivit").state_dict().items()}
    weights.update({f"maskgit.{k}": v for k, v in phenaki_trainer.unwrap("phenaki").maskgit.state_dict().items()})
    save_file({k: v.detach().clone().contiguous() for k, v in weights.items()}, str(out / f"rank{rank}.safetensors"))
    (out / f"rank{rank}.json").write_text(
        json.dumps(
            {"num_processes": trainer.num_processes, "steps": [trainer.step_counts, phenaki_trainer.step_counts]}
        )
    )
    trainer.wait_for_everyone()
    torch.distributed.destroy_process_group()
