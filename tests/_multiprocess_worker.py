"""Worker of test_multiprocess.py, started by `torchrun --standalone --nproc_per_node 2` (two CPU processes over
gloo): `python _multiprocess_worker.py OUT PACKAGE...`.

For each package it trains one tiny trainer (_trainer_factories.PACKAGE_KINDS) for three steps, trains a second one
for one step (the middle of an epoch), saves it from the main process only and from every process, resumes a
third trainer from the file and trains two more steps, and resumes a fourth from the main-only file. Each process
writes what it saw to OUT/PACKAGE/rank{N}.json; the test compares the processes and the runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _trainer_factories as factories  # noqa: E402

STEPS, RESUME_AT = 3, 1


def _checksum(run: factories.Run) -> list[float]:
    weights = run.weights()
    return [float(w.double().sum()) for w in weights] + [float((w.double() ** 2).sum()) for w in weights]


def _same_on_every_process(value) -> bool:
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return all(v == values[0] for v in values)


def _fresh(kind: str, folder: Path, seed: int) -> tuple[factories.Run, int]:
    run = factories.build(kind, folder, seed=seed)
    # drawn right after seeding: the processes must not share one random stream (same noise and timesteps)
    return run, int(torch.randint(0, 2**31 - 1, ()))


def _steps(run: factories.Run, count: int, after_first=None) -> list[list[float]]:
    losses = []
    for index in range(count):
        losses.append(run.step())
        if index == 0 and after_first is not None:
            after_first()
    return losses


def check_package(package: str, out: Path) -> dict:
    kind = factories.PACKAGE_KINDS[package]
    folder = out / package

    uninterrupted, draw = _fresh(kind, folder / "a", seed=7)
    engine = uninterrupted.engine
    rank = engine.process_index
    # the VAE trainer writes reconstructions from the main process only, mid-run: that must not move its data
    samples = getattr(uninterrupted.trainer, "save_results", None) if kind == "vqgan-vae" else None
    expected = _steps(uninterrupted, STEPS, after_first=samples)
    positions = {name: stream.state_dict() for name, stream in engine.data_streams.items()}

    first, _ = _fresh(kind, folder / "b", seed=7)
    resumed = _steps(first, RESUME_AT)
    main_only, everyone = folder / "main-only.safetensors", folder / "every-process.safetensors"
    if first.engine.is_main:
        first.save(main_only)  # holds no collective operation: the other process does not wait for it
    first.save(everyone)
    second, _ = _fresh(kind, folder / "c", seed=123)
    second.load(everyone)
    resumed += _steps(second, STEPS - RESUME_AT)

    third, _ = _fresh(kind, folder / "d", seed=123)
    third.load(main_only)  # the other processes have no RNG file of their own here: they re-seed
    after_main_only = _steps(third, 1)

    info = {
        "world_size": engine.num_processes,
        "distributed_type": str(engine.accelerator.distributed_type),
        "is_main": engine.is_main,
        "first_draw": draw,
        "losses": expected,
        "resumed_losses": resumed,
        "weights": _checksum(uninterrupted),
        "resumed_weights": _checksum(second),
        "weights_equal_across_processes": _same_on_every_process(_checksum(uninterrupted)),
        "resumed_weights_equal_across_processes": _same_on_every_process(_checksum(second)),
        "main_only_weights_equal_across_processes": _same_on_every_process(_checksum(third)),
        "main_only_steps": dict(third.engine.step_counts),
        "after_main_only": after_main_only,
        "positions": positions,
        "positions_equal_across_processes": _same_on_every_process(positions),
        "own_rng_file": _has_own_rng_file(everyone, rank),
    }
    (folder / f"rank{rank}.json").write_text(json.dumps(info))
    return info


def _has_own_rng_file(checkpoint: Path, rank: int) -> bool:
    from synthesis_core.training import process_rng_path

    return rank == 0 or process_rng_path(checkpoint, rank).is_file()


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    out = Path(argv[0])
    for package in argv[1:]:
        check_package(package, out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
