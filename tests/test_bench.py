"""The benchmark (tools/bench.py): a tiny workload on the CPU writes a result file; FLOP accounting; comparisons.

No timing assertions: only that times are measured and reported consistently.
"""

import importlib.util
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import bench  # noqa: E402 (tools/ is on sys.path, see conftest.py)
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


def test_tiny_workload_on_cpu_writes_a_result_file(tmp_path):
    out = tmp_path / "results" / "run.json"
    argv = [
        "--size",
        "tiny",
        "--device",
        "cpu",
        "--workloads",
        "video_diffusion_16x64",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--no-isolate",
        "--out",
        str(out),
    ]
    assert bench.main(argv) == 0

    report = json.loads(out.read_text())
    assert report["command"] == "python3 tools/bench.py " + " ".join(argv)
    assert report["torch"] == torch.__version__ and report["machine"]["cpu_count"] >= 1
    assert report["date"][:4].isdigit()
    (result,) = report["results"]
    assert "error" not in result, result.get("error")
    assert result["workload"] == "video_diffusion_16x64" and result["precision"] == "fp32"
    assert len(result["ms_per_step_all"]) == 2
    assert result["ms_per_step"] == pytest.approx(
        sorted(result["ms_per_step_all"])[0] / 2 + sorted(result["ms_per_step_all"])[1] / 2
    )
    assert result["samples_per_s"] == pytest.approx(result["batch_size"] / result["ms_per_step"] * 1e3)
    assert result["flops_per_step"] > 0
    assert result["tflops"] == pytest.approx(result["flops_per_step"] / result["ms_per_step"] * 1e3 / 1e12)
    assert result["sample_ms"] > 0 and result["peak_memory_mb"] >= 0
    assert result["package"] == "video-diffusion-pytorch" and result["package_version"]


def _measure_module(monkeypatch, model, loss, batch):
    """bench.measure on a hand-made workload (the code path of the reference workloads)."""

    def workload(size, device):
        return bench.Workload(model=model, loss=loss, batch_size=batch, description="hand-made")

    monkeypatch.setitem(bench.WORKLOADS, "hand_made", workload)
    monkeypatch.setitem(bench.PACKAGE_OF, "hand_made", "torch")
    return bench.measure("hand_made", "tiny", "cpu", steps=2, warmup=1)


def test_flops_of_a_known_step_are_counted_exactly(monkeypatch):
    # a linear layer: forward 2*b*i*o, backward only the weight gradient (the input needs none) 2*b*i*o
    batch, dim_in, dim_out = 4, 16, 8
    layer = torch.nn.Linear(dim_in, dim_out)
    x = torch.randn(batch, dim_in)
    result = _measure_module(monkeypatch, layer, lambda: layer(x).square().mean(), batch)
    assert result["flops_per_step"] == result["model_flops_per_step"] == 2 * (2 * batch * dim_in * dim_out)
    assert result["flops_forward"] == 2 * batch * dim_in * dim_out
    assert result["sample_ms"] is None and len(result["ms_per_step_all"]) == 2
    assert result["adaptations"] == []


class TinyAttention(torch.nn.Module):
    """Attention and nothing else that costs FLOPs: qkv projection, fused SDPA, output projection."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.to_qkv = torch.nn.Linear(dim, 3 * dim, bias=False)
        self.to_out = torch.nn.Linear(dim, dim, bias=False)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = (t.reshape(b, n, self.heads, d // self.heads).transpose(1, 2) for t in self.to_qkv(x).chunk(3, -1))
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, d))


def test_cpu_fused_attention_flops_match_a_hand_count(monkeypatch):
    b, n, dim, heads = 2, 16, 32, 4
    head_dim, tokens = dim // heads, b * n
    model = TinyAttention(dim, heads)
    x = torch.randn(b, n, dim)  # needs no gradient: the qkv projection computes only its weight gradient
    result = _measure_module(monkeypatch, model, lambda: model(x).square().mean(), b)

    # hand count, 2 FLOPs per multiply-add
    qkv, out = 2 * tokens * dim * 3 * dim, 2 * tokens * dim * dim
    attention_matmul = 2 * b * heads * n * n * head_dim  # QK^T, PV, and each matmul of the backward: same size
    forward = qkv + 2 * attention_matmul + out
    # backward: out (input and weight gradients), fused attention (scores again, dP, dV, dQ, dK), qkv (weight)
    hardware = forward + 2 * out + 5 * attention_matmul + qkv
    model_flops = hardware - attention_matmul  # without the recomputed scores: backward = 2x forward

    assert result["flops_forward"] == pytest.approx(forward, rel=0.01)
    assert result["flops_per_step"] == pytest.approx(hardware, rel=0.01)
    assert result["model_flops_per_step"] == pytest.approx(model_flops, rel=0.01)
    assert result["flops_attention_rescoring"] == attention_matmul
    # the attention went through the CPU fused kernel, which torch alone counts as nothing
    assert result["flops_by_op"]["_scaled_dot_product_flash_attention_for_cpu"] == 2 * attention_matmul
    assert result["flops_by_op"]["_scaled_dot_product_flash_attention_for_cpu_backward"] == 5 * attention_matmul


def test_reversible_layers_count_one_recomputed_forward(monkeypatch):
    from synthesis_core.chunked import ReversibleSequence, SequentialResidual

    b, n, d = 2, 8, 16
    blocks = [(torch.nn.Linear(d, d, bias=False), torch.nn.Linear(d, d, bias=False))]
    x = torch.randn(b, n, d, requires_grad=True)
    linear = 2 * b * n * d * d

    stack = ReversibleSequence(blocks)
    reversible = _measure_module(monkeypatch, stack, lambda: stack(x).square().mean(), b)
    # forward f and g; backward runs f and g again to rebuild their inputs, then their input and weight gradients
    assert reversible["flops_forward"] == 2 * linear
    assert reversible["flops_recomputed_forward"] == 2 * linear
    assert reversible["flops_per_step"] == 2 * linear + 2 * linear + 4 * linear
    assert reversible["model_flops_per_step"] == 6 * linear  # 3x forward, the plain stack's count

    plain_stack = SequentialResidual(blocks)
    plain = _measure_module(monkeypatch, plain_stack, lambda: plain_stack(x).square().mean(), b)
    assert plain["flops_per_step"] == plain["model_flops_per_step"] == reversible["model_flops_per_step"]
    assert plain["flops_recomputed_forward"] == 0


def test_comparison_ratios_and_error_rows():
    ours = [
        {
            "ms_per_step": 10.0,
            "peak_memory_mb": 50.0,
            "tflops": 2.0,
            "sample_ms": None,
            "model_flops_per_step": 2e9,
            "adaptations": [],
        },
        {
            "ms_per_step": 30.0,
            "peak_memory_mb": 50.0,
            "tflops": 1.0,
            "sample_ms": None,
            "model_flops_per_step": 2e9,
            "adaptations": [],
        },
    ]
    theirs = [
        {
            "ms_per_step": 40.0,
            "peak_memory_mb": 100.0,
            "tflops": 0.5,
            "sample_ms": None,
            "model_flops_per_step": 2.05e9,
            "adaptations": ["Thing(dim_mult=...) instead of dim_mults="],
        },
        {"workload": "x", "error": "ImportError: no module"},
    ]
    summary = bench.compare_records(ours, theirs)
    assert summary["ms_per_step"] == {"ours": 20.0, "theirs": 40.0, "ratio": 0.5}
    assert summary["speedup"] == 2.0
    assert summary["peak_memory_mb"]["ratio"] == 0.5
    assert summary["sample_ms"]["ratio"] is None
    assert summary["flops_ratio"] == pytest.approx(2 / 2.05) and summary["same_work"] is True
    assert summary["adaptations"] == {"ours": [], "theirs": ["Thing(dim_mult=...) instead of dim_mults="]}
    assert summary["errors"] == ["ImportError: no module"]
    table = bench.compare_table({"imagen_base64": summary})
    assert "| imagen_base64 | 20.0 | 40.0 | 2.00x | 2.00 / 2.05 | 0.98 | yes | 0.50 | - | 1 |" in table

    theirs[0]["model_flops_per_step"] = 4e9  # twice the work: the speed ratio is not like for like
    assert bench.compare_records(ours, theirs)["same_work"] is False
    rows = bench.speed_table([{"workload": "nuwa_10x128", "size": "cpu", "device": "cpu", "error": "boom"}])
    assert "error: boom" in rows


@pytest.mark.slow
def test_worker_process_reports_one_workload():
    # the isolated path (one process per workload) is the one --compare uses with another environment's python
    args = bench.resolve_defaults(
        bench.parse_args(["--size", "tiny", "--device", "cpu", "--steps", "1", "--warmup", "1", "--no-sample"])
    )
    result = bench.run_worker(sys.executable, "phenaki_cvivit_17x128", args)
    assert "error" not in result, result.get("error")
    assert result["workload"] == "phenaki_cvivit_17x128" and result["size"] == "tiny"
    assert result["python"] == sys.executable and result["ms_per_step"] > 0


def test_quality_curve_in_the_smoke_configuration(tmp_path):
    out = tmp_path / "quality.json"
    # every demo model (driven through the one generation protocol; the two-stage ones switch from their
    # tokenizer to their generator halfway)
    assert (
        bench.main(
            [
                "--quality",
                "--smoke",
                "--device",
                "cpu",
                "--models",
                "video-diffusion,imagen,make-a-video,phenaki,nuwa",
                "--points",
                "0.5,1",
                "--eval-samples",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    records = json.loads(out.read_text())["quality"]
    assert [record["model"] for record in records] == ["video-diffusion", "imagen", "make-a-video", "phenaki", "nuwa"]
    for record in records:
        assert "error" not in record, record.get("error")
        steps = [point["steps"] for point in record["curve"]]
        assert steps == [1, 2]  # the smoke budget is 2 steps: scored halfway and at the end
        for point in record["curve"]:
            assert point["n"] == 2 and 0 <= point["color"] <= 1 and point["train_seconds"] >= 0
        assert record["parameters"] > 0


def test_unknown_workload_is_refused_by_name(tmp_path):
    with pytest.raises(SystemExit, match="dalle_64"):
        bench.main(["--workloads", "dalle_64", "--device", "cpu", "--out", str(tmp_path / "x.json")])


def test_t5_config_cache_is_found_by_the_hub_client_offline(tmp_path):
    config = bench.write_t5_config_cache(tmp_path)
    assert json.loads(config.read_text())["d_model"] == 768
    assert bench.write_t5_config_cache(tmp_path) == config  # idempotent
    repo = tmp_path / "hub" / "models--google--t5-v1_1-base"
    assert (repo / "refs" / "main").read_text() == config.parent.name
    if importlib.util.find_spec("huggingface_hub") is None:
        pytest.skip("huggingface_hub is not installed: the layout was checked by hand above")
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(bench.T5_NAME, "config.json", cache_dir=tmp_path / "hub")
    assert found is not None and Path(found).resolve() == config.resolve()


def test_training_data_file_holds_the_dataset_batches_and_one_hot_vectors(tmp_path):
    from synthesis_core.shapes import ShapesVideoDataset

    config = bench.QualityCompareConfig(steps=3, batch_size=2, image_size=8, num_frames=4, eval_samples=5, seed=7)
    info = bench.write_training_data(tmp_path / "data.pt", config)
    data = torch.load(tmp_path / "data.pt", weights_only=True)
    assert info["videos"] == 6 and data["indices"].dtype == torch.uint8 and data["indices"].shape == (6, 4, 8, 8)
    dataset = ShapesVideoDataset(6, image_size=8, num_frames=4, seed=7)
    for index in (0, 5):  # decoded from the palette, the stored video is the dataset's, bit for bit
        video, caption = dataset[index]
        assert torch.equal(data["palette"][data["indices"][index].long()].permute(3, 0, 1, 2), video)
        assert data["cond"][index].tolist() == bench.caption_vector(caption)
    assert bench.caption_vector("a green triangle moving up") == [0, 1, 0, 0] + [0, 0, 1] + [0, 0, 1, 0]
    assert data["eval_cond"].shape == (5, 11) and data["config"]["steps"] == 3
    assert info["sha256"] == bench._sha256(tmp_path / "data.pt")


def test_wilson_interval():
    assert bench.wilson_interval(0, 0) is None
    low, high = bench.wilson_interval(24, 48)
    assert low < 0.5 < high and high - low == pytest.approx(0.27, abs=0.01)
    assert bench.wilson_interval(48, 48)[1] == 1.0


@pytest.mark.slow
def test_quality_side_by_side_with_this_environment_as_the_other(tmp_path):
    # the published package's environment is not needed for the mechanism: this one stands in for it
    out = tmp_path / "quality-compare.json"
    assert (
        bench.main(
            [
                "--quality",
                "--compare",
                sys.executable,
                "--device",
                "cpu",
                "--steps",
                "2",
                "--batch-size",
                "2",
                "--image-size",
                "8",
                "--frames",
                "2",
                "--dim",
                "8",
                "--timesteps",
                "3",
                "--eval-samples",
                "3",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())["quality_compare"]
    assert report["data"]["videos"] == 4 and report["config"]["timesteps"] == 3
    for side in ("ours", "theirs"):
        record = report[side]
        assert "error" not in record, record.get("error")
        assert record["data_sha256"] == report["data"]["sha256"] and record["steps"] == 2
        assert record["sample_shape"] == [3, 3, 2, 8, 8] and record["score_n"] == 3
        assert set(record["score"]) == {"color", "shape", "direction", "all"}
    assert set(report["ours_ahead"]) == {"color", "shape", "direction", "all"}


PUBLISHED_PYTHON = os.environ.get("BENCH_PUBLISHED_PYTHON", "/work/published-venv/bin/python")


@pytest.mark.slow
@pytest.mark.skipif(
    not os.path.exists(PUBLISHED_PYTHON),
    reason="no environment with the published packages (see benchmarks/README.md to make one)",
)
def test_published_make_a_video_runs_with_its_adaptation_recorded():
    args = bench.resolve_defaults(
        bench.parse_args(["--size", "tiny", "--device", "cpu", "--steps", "1", "--warmup", "1", "--no-sample"])
    )
    result = bench.run_worker(PUBLISHED_PYTHON, "make_a_video_16x64", args)
    assert "error" not in result, result.get("error")
    assert result["package_version"] == "0.4.0"
    assert result["adaptations"] == ["SpaceTimeUnet(dim_mult=...) instead of dim_mults="]
    assert result["model_flops_per_step"] > 0
