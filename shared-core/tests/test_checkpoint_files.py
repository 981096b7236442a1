"""Temporary files of interrupted saves are removed by the next save or load (and only those), and numbered
checkpoints are pruned together with their companion files."""

import os
import subprocess
import sys
import textwrap
import time

import torch

from synthesis_core.checkpoint import CheckpointManager, _host_tag, remove_stale_temporary_files, save_checkpoint

# a save that dies half-way, as on a kill or an out-of-memory: no `finally` runs, the temporary file stays
CRASHING_SAVE = textwrap.dedent("""
    import os, sys
    import torch
    import synthesis_core.checkpoint as ckpt

    def dying_save_file(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a checkpoint")
        os._exit(3)

    ckpt.save_file = dying_save_file
    ckpt.CheckpointManager(sys.argv[1]).save(1, {"w": torch.zeros(2)})
""")


def _tmp_names(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_a_crashed_save_leaves_a_temporary_file_that_the_next_save_or_load_removes(tmp_path):
    folder = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-c", CRASHING_SAVE, str(folder)],
        capture_output=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 3, result.stderr.decode()
    [crashed] = _tmp_names(folder)
    assert crashed.startswith(".checkpoint-00000001.safetensors.") and crashed.endswith(".tmp")
    dead_writer = crashed.split(".")[-3]  # "{host}-{pid}" of the process that died

    host = _host_tag()
    live = f".checkpoint-00000009.safetensors.{host}-{os.getpid()}.abcd1234.tmp"  # a write of this very process
    remote_old = ".checkpoint-00000008.safetensors.0badc0de-17.abcd1234.tmp"  # another host, untouched for hours
    remote_recent = ".checkpoint-00000010.safetensors.0badc0de-17.abcd1234.tmp"  # another host, being written
    unrelated = f".notes.json.{dead_writer}.abcd1234.tmp"  # dead too, but not a checkpoint of this manager
    for name in (live, remote_old, remote_recent, unrelated):
        (folder / name).write_bytes(b"x")
    hours_ago = time.time() - 3 * 3600
    os.utime(folder / remote_old, (hours_ago, hours_ago))

    manager = CheckpointManager(folder)
    manager.save(2, {"w": torch.ones(2)})
    assert _tmp_names(folder) == sorted([live, remote_recent, unrelated])
    assert [step for step, _ in manager.list()] == [2]

    # a load removes them as well (the writer of this one died too)
    again = f".checkpoint-00000003.safetensors.{dead_writer}.efgh5678.tmp"
    (folder / again).write_bytes(b"x")
    tensors, _ = manager.load("latest")
    assert torch.equal(tensors["w"], torch.ones(2))
    assert again not in _tmp_names(folder)

    # a single file: its own leftovers go on its next save
    single = f".trainer.safetensors.{dead_writer}.ijkl9012.tmp"
    (folder / single).write_bytes(b"x")
    save_checkpoint(folder / "trainer.safetensors", {"w": torch.zeros(1)})
    assert single not in _tmp_names(folder) and live in _tmp_names(folder)
    assert remove_stale_temporary_files(folder, "notes") == [folder / unrelated]


def test_pruning_removes_the_companion_files_of_old_checkpoints(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    for step in (1, 2):
        save_checkpoint(tmp_path / f"checkpoint-{step:08d}.rng-rank1.safetensors", {"r": torch.zeros(1)})
        manager.save(step, {"w": torch.full((1,), float(step))})
    # a companion of a newer checkpoint may be written (by another process) before the checkpoint itself
    save_checkpoint(tmp_path / "checkpoint-00000003.rng-rank1.safetensors", {"r": torch.zeros(1)})
    manager.save(3, {"w": torch.full((1,), 3.0)})
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint-00000002.rng-rank1.safetensors",
        "checkpoint-00000002.safetensors",
        "checkpoint-00000003.rng-rank1.safetensors",
        "checkpoint-00000003.safetensors",
    ]
    assert [step for step, _ in manager.list()] == [2, 3]  # companions are not checkpoints
