"""tools/api_share.py: the comparison of two API dumps, the report, and the offline hub cache it imports with."""

import json
import subprocess
import sys

import api_share


def _spec(keywords, methods, attributes=None, var_keyword=False):
    return {
        "keywords": keywords,
        "var_keyword": var_keyword,
        "own_methods": methods,
        "all_attributes": sorted(attributes if attributes is not None else methods),
        "all_method_keywords": methods,
    }


def test_compare_counts_classes_keywords_and_methods():
    published = {
        "classes": {
            "Unet": _spec(["dim", "dim_mult", "flash_attn"], {"forward": ["x", "timestep"], "init_": []}),
            "Gone": _spec(["a", "b"], {"run": []}),
        }
    }
    ours = {
        "classes": {
            "Unet": _spec(["dim", "dim_mults", "dim_mult"], {"forward": ["x"]}, attributes=["forward", "state_dict"]),
        }
    }
    share = api_share.compare_package("make_a_video_pytorch", published, ours)
    assert share.classes == (1, 2) and share.missing_classes == ["Gone"]
    # a missing class counts its keywords and methods as missing, without listing them one by one
    assert share.keywords == (2, 5) and share.missing_keywords == ["Unet(flash_attn=)"]
    assert share.methods == (1, 3) and share.missing_methods == ["Unet.init_"]
    assert share.method_keywords == (1, 2) and share.missing_method_keywords == ["Unet.forward(timestep=)"]

    report = api_share.render_report([share])
    assert "| make-a-video-pytorch 0.4.0 | 1/2 | 2/5 (40.0%) | 1/3 (33.3%) | 37.5% |" in report
    assert "`Unet(flash_attn=)`" in report and "`Gone`" in report


def test_an_unimportable_package_is_reported_not_counted():
    share = api_share.compare_package("nuwa_pytorch", {"error": "ImportError: no"}, {"classes": {}})
    assert share.error.startswith("published package not importable") and share.classes == (0, 0)
    assert "not importable" in api_share.render_report([share])


def test_offline_hub_cache_resolves_t5_configs_without_network(tmp_path):
    api_share.make_offline_hub_cache(tmp_path)
    code = "from transformers import T5Config; print(T5Config.from_pretrained('google/t5-v1_1-base').d_model)"
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={"HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "768"


def test_dump_reads_constructor_keywords_methods_and_forwarded_kwargs():
    # our make-a-video, introspected the way the published packages are (in a subprocess)
    code = api_share.DUMP_SOURCE
    run = subprocess.run(
        [sys.executable, "-c", code, "make_a_video_pytorch"], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    classes = json.loads(run.stdout.strip().splitlines()[-1])["make_a_video_pytorch"]["classes"]
    assert {"PseudoConv3d", "ResnetBlock", "Downsample", "Upsample", "SpaceTimeUnet"} <= set(classes)
    assert "dim_mult" in classes["SpaceTimeUnet"]["keywords"] and "self" not in classes["SpaceTimeUnet"]["keywords"]
    assert (
        "forward" in classes["SpaceTimeUnet"]["own_methods"]
        and "state_dict" in classes["SpaceTimeUnet"]["all_attributes"]
    )
    # methods from base classes of other packages (the core's) count with their keywords
    assert "strict" in classes["MakeAVideoTrainer"]["all_method_keywords"]["load"]
    # FrameInterpolator(**kwargs) passes them on to MakeAVideo (register_loadable(forwards_kwargs_to=...))
    assert "timesteps" in classes["FrameInterpolator"]["keywords"]
