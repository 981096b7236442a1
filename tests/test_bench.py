"""The benchmark (tools/bench.py): a tiny workload on the CPU writes a result file; FLOP accounting; comparisons.

No timing assertions: only that times are measured and reported consistently.
"""
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import bench  # noqa: E402 (tools/ is on sys.path, see conftest.py)
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


def test_tiny_workload_on_cpu_writes_a_result_file(tmp_path):
    out = tmp_path / "results" / "run.json"
    argv = ["--size", "tiny", "--device", "cpu", "--workloads", "video_diffusion_16x64", "--steps", "2",
            "--warmup", "1", "--no-isolate", "--out", str(out)]
    assert bench.main(argv) == 0

    report = json.loads(out.read_text())
    assert report["command"] == "python3 tools/bench.py " + " ".join(argv)
    assert report["torch"] == torch.__version__ and report["machine"]["cpu_count"] >= 1
    assert report["date"][:4].isdigit()
    (result,) = report["results"]
    assert "error" not in result, result.get("error")
    assert result["workload"] == "video_diffusion_16x64" and result["precision"] == "fp32"
    assert len(result["ms_per_step_all"]) == 2
    assert result["ms_per_step"] == pytest.approx(sorted(result["ms_per_step_all"])[0] / 2
                                                  + sorted(result["ms_per_step_all"])[1] / 2)
    assert result["samples_per_s"] == pytest.approx(result["batch_size"] / result["ms_per_step"] * 1e3)
    assert result["flops_per_step"] > 0
    assert result["tflops"] == pytest.approx(result["flops_per_step"] / result["ms_per_step"] * 1e3 / 1e12)
    assert result["sample_ms"] > 0 and result["peak_memory_mb"] >= 0
    assert result["package"] == "video-diffusion-pytorch" and result["package_version"]


def test_flops_of_a_known_step_are_counted_exactly(monkeypatch):
    # a linear layer: forward 2*b*i*o, backward only the weight gradient (the input needs none) 2*b*i*o
    batch, dim_in, dim_out = 4, 16, 8

    def linear_workload(size, device):
        layer = torch.nn.Linear(dim_in, dim_out)
        x = torch.randn(batch, dim_in)
        return bench.Workload(model=layer, loss=lambda: layer(x).square().mean(), batch_size=batch,
                              description="linear")

    monkeypatch.setitem(bench.WORKLOADS, "linear", linear_workload)
    monkeypatch.setitem(bench.PACKAGE_OF, "linear", "torch")
    result = bench.measure("linear", "tiny", "cpu", steps=3, warmup=1)
    assert result["flops_per_step"] == 2 * (2 * batch * dim_in * dim_out)
    assert result["flops_method"] == "forward + backward"
    assert result["sample_ms"] is None and len(result["ms_per_step_all"]) == 3


def test_comparison_ratios_and_error_rows():
    ours = [{"ms_per_step": 10.0, "peak_memory_mb": 50.0, "tflops": 2.0, "sample_ms": None},
            {"ms_per_step": 30.0, "peak_memory_mb": 50.0, "tflops": 1.0, "sample_ms": None}]
    theirs = [{"ms_per_step": 40.0, "peak_memory_mb": 100.0, "tflops": 0.5, "sample_ms": None},
              {"workload": "x", "error": "ImportError: no module"}]
    summary = bench.compare_records(ours, theirs)
    assert summary["ms_per_step"] == {"ours": 20.0, "theirs": 40.0, "ratio": 0.5}
    assert summary["speedup"] == 2.0
    assert summary["peak_memory_mb"]["ratio"] == 0.5
    assert summary["sample_ms"]["ratio"] is None
    assert summary["errors"] == ["ImportError: no module"]
    table = bench.compare_table({"imagen_base64": summary})
    assert "| imagen_base64 | 20.0 | 40.0 | 2.00x | 0.50 | - |" in table
    rows = bench.speed_table([{"workload": "nuwa_10x128", "size": "cpu", "device": "cpu", "error": "boom"}])
    assert "error: boom" in rows


@pytest.mark.slow
def test_worker_process_reports_one_workload():
    # the isolated path (one process per workload) is the one --compare uses with another environment's python
    args = bench.resolve_defaults(bench.parse_args(["--size", "tiny", "--device", "cpu", "--steps", "1",
                                                    "--warmup", "1", "--no-sample"]))
    result = bench.run_worker(sys.executable, "phenaki_cvivit_17x128", args)
    assert "error" not in result, result.get("error")
    assert result["workload"] == "phenaki_cvivit_17x128" and result["size"] == "tiny"
    assert result["python"] == sys.executable and result["ms_per_step"] > 0


def test_quality_curve_in_the_smoke_configuration(tmp_path):
    out = tmp_path / "quality.json"
    assert bench.main(["--quality", "--smoke", "--device", "cpu", "--models", "video-diffusion",
                       "--points", "0.5,1", "--eval-samples", "2", "--out", str(out)]) == 0
    (record,) = json.loads(out.read_text())["quality"]
    assert "error" not in record, record.get("error")
    steps = [point["steps"] for point in record["curve"]]
    assert steps == [1, 2]  # the smoke budget is 2 steps: scored halfway and at the end
    for point in record["curve"]:
        assert point["n"] == 2 and 0 <= point["color"] <= 1 and point["train_seconds"] >= 0


def test_unknown_workload_is_refused_by_name(tmp_path):
    with pytest.raises(SystemExit, match="dalle_64"):
        bench.main(["--workloads", "dalle_64", "--device", "cpu", "--out", str(tmp_path / "x.json")])
