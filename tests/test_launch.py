"""Launch commands in and out (moecalc.launch): seed 001's commands, round trips, bad input.

Expected layouts and limits are read off SGLang 0.5.5's and vLLM 0.11.0's own rules by hand
(server_args.py, tp_worker.py, fused_moe/config.py), not recomputed with launch.py.
"""

from __future__ import annotations

import glob
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from moecalc import launch, profiles
from moecalc.errors import InputError

ROOT = Path(__file__).resolve().parent.parent
MOECALC = Path(sys.executable).parent / "moecalc"
SEED = ROOT / "params" / "launch" / "seed-001-decode.sh"


@pytest.fixture(scope="module")
def v32():
    return profiles.load_model("deepseek-v3.2")


@pytest.fixture(scope="module")
def h200():
    return profiles.load_hardware("h200")


def test_seed001_decode_layout(v32, h200):
    L = launch.parse("sglang", SEED.read_text(encoding="utf-8"), v32, h200, "0.5.5")
    # --tp-size 16 --dp-size 16 --enable-dp-attention: attention TP 16/16 = 1 × DP16, not "TP=16"
    assert (L.layout.attention_tp, L.layout.attention_dp) == (1, 16)
    # --moe-a2a-backend deepep: ep_size = tp_size = 16, MoE TP 1
    assert (L.layout.moe_tp, L.layout.ep) == (1, 16)
    assert (L.layout.dense_tp, L.layout.lm_head, L.layout.devices, L.layout.nodes) == (1, "dp", 16, 2)
    assert L.role == "decode"
    assert L.running_per_rank == 1024 // 16 == 64
    assert max(L.graph_bs) == 64
    # EAGLE, 1 step, top-1: 2 tokens per request per verify step; 64 × 2 = 128 = DeepEP's low-latency buffer
    assert L.spec_draft_tokens == 1
    ll = L.limit("DeepEP low-latency tokens per rank")
    assert ll.value == "128 ≤ 128" and ll.ok


def test_seed001_prefill_limits(v32, h200):
    L = launch.parse("sglang", (ROOT / "params" / "launch" / "seed-001-prefill.sh").read_text(encoding="utf-8"), v32, h200,
                     "0.5.5")
    assert (L.layout.attention_tp, L.layout.attention_dp, L.layout.ep) == (1, 8, 8)
    assert L.chunk_per_rank == 65536 // 8 == 8192
    assert L.running_per_rank == 512 // 8 == 64
    assert L.graph_bs == ()  # prefill servers and DeepEP normal mode run without CUDA graphs


def test_cli_parse_gives_the_seed_layout():
    r = subprocess.run([str(MOECALC), "launch", "parse", "--framework", "sglang", "--version", "0.5.5", "--hardware", "h200",
                        "--file", str(SEED), "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["layout"]["attention_tp"] == 1 and d["layout"]["attention_dp"] == 16 and d["layout"]["ep"] == 16
    assert d["requests_per_rank"] == 64
    assert d["memory"]["fits"] and d["estimate"]["decode"]["batch_per_rank"] <= 64


LAYOUTS = [(1, 16, 1, 16), (1, 8, 1, 8), (2, 8, 1, 16), (8, 1, 8, 1), (8, 1, 1, 8), (4, 8, 1, 32), (1, 32, 1, 32)]


@pytest.mark.parametrize("framework", launch.FRAMEWORKS)
@pytest.mark.parametrize("tp, dp, moe_tp, ep", LAYOUTS)
def test_emit_round_trips(framework, tp, dp, moe_tp, ep):
    m, hw = profiles.load_model("deepseek-v3"), profiles.load_hardware("h800")
    lay = launch.layout_for(framework, tp, dp, moe_tp, ep, hw.scale_up_domain)
    try:
        commands = launch.emit(framework, lay, "deepseek-v3", "decode", 32)
    except InputError as exc:  # a layout the framework cannot express: said so, by name
        assert framework == "vllm" and (moe_tp, ep) not in ((1, tp * dp), (tp * dp, 1)), exc
        return
    assert len(commands) == lay.nodes
    for cmd in commands:
        back = launch.parse(framework, cmd, m, hw)
        assert back.layout == lay
        assert back.running_per_rank == 32


def test_search_emit_round_trips():
    r = subprocess.run([str(MOECALC), "search", "--hardware", "h200", "--model", "deepseek-v3.2", "--devices", "16",
                        "--emit", "sglang", "--json", "--top", "1"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)["launch"]
    assert d["round_trip"] and d["layout"] == d["parsed_back"]


@pytest.mark.parametrize("framework", launch.FRAMEWORKS)
def test_plan_emit_round_trips(framework):
    """plan --emit: each pool of the best plans, emitted and parsed back, is the plan's layout, with
    its batch as the per-rank running limit and (aggregated) its chunk as the per-rank chunk."""
    r = subprocess.run([str(MOECALC), "plan", "--hardware", "h100", "--gpus", "32", "--emit", framework, "--json",
                        "--top", "1"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    m, hw = profiles.load_model("deepseek-v3"), profiles.load_hardware("h100")
    pools = [("prefill", d["disagg"]["best"]["prefill"], d["launch"]["disagg"]["prefill"]),
             ("decode", d["disagg"]["best"]["decode"], d["launch"]["disagg"]["decode"]),
             ("mixed", d["agg"]["best"]["layout"], d["launch"]["agg"])]
    for role, plan_pool, e in pools:
        assert e["round_trip"] and e["role"] == role and e["instances"] == plan_pool["instances"]
        back = launch.parse(framework, e["commands"][0], m, hw)
        assert (back.layout.attention_tp, back.layout.attention_dp, back.layout.ep) == (
            plan_pool["tp"], plan_pool["dp"], plan_pool["ep"])
        assert len(e["commands"]) == -(-plan_pool["gpus_per_instance"] // 8)  # one per 8-GPU node
        if role != "prefill":
            assert back.running_per_rank == plan_pool["batch"]
        if role == "mixed":
            assert back.chunk_per_rank == plan_pool["chunk"]


@pytest.mark.parametrize("argv, needle", [
    (["--model-path", "deepseek-v3", "--enable-dp-atention"], "did you mean --enable-dp-attention"),
    (["--model-path", "deepseek-v3", "--tp-size", "sixteen"], "expected an integer"),
    (["--model-path", "deepseek-v3", "--tp-size", "16", "--dp-size", "3", "--enable-dp-attention"], "does not divide"),
    (["--model-path", "deepseek-v3", "--tp-size", "16", "--dp-size", "16", "--enable-dp-attention",
      "--disaggregation-mode", "decode", "--version", "0.5.5"], "--prefill-round-robin-balance"),
    (["--model-path", "deepseek-v3", "--deepep-mode", "fast"], "not one of"),
    (["--model-path", "deepseek-v3", "--tp-size", "3"], "does not divide the 128 heads"),
])
def test_bad_commands_are_one_line(argv, needle):
    version = argv[argv.index("--version"):][:2] if "--version" in argv else []
    argv = [a for a in argv if a not in version]
    r = subprocess.run([str(MOECALC), "launch", "parse", "--framework", "sglang", *version, "--", *argv],
                       capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and needle in r.stderr, r.stderr


@pytest.mark.parametrize("option, value", [("--kv-len", "-5"), ("--kv-len", "1_000"), ("--prompt-len", "0"),
                                           ("--mtp-accept", "nan"), ("--mtp-accept", "0.5")])
def test_launch_options_parse_strictly(option, value, capsys):
    """launch parse's own options go through the same strict parsers as every other command."""
    from moecalc import cli

    argv = ["launch", "parse", "--framework", "sglang", option, value, "--", "--model-path", "deepseek-v3"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"argument {option}:" in err[0]


def test_vllm_layout_rules():
    m = profiles.load_model("deepseek-r1")
    L = launch.parse("vllm", "vllm serve deepseek-ai/DeepSeek-R1 -tp 8 -dp 4 --enable-expert-parallel --max-num-seqs 64", m)
    # vLLM: attention TP8 × DP4; with expert parallelism EP = tp × dp = 32; max-num-seqs is per DP engine
    assert (L.layout.attention_tp, L.layout.attention_dp, L.layout.moe_tp, L.layout.ep) == (8, 4, 1, 32)
    assert L.running_per_rank == 64
    L = launch.parse("vllm", "vllm serve x -tp 8 -dp 2", m)
    assert (L.layout.moe_tp, L.layout.ep) == (16, 1)  # no EP: MoE TP flattened across DP


def test_flag_tables_are_the_frameworks_own():
    sg = launch.flag_definitions("sglang", "0.5.5")
    assert sg["version"] == "0.5.5" and len(sg["flags"]) > 200
    # flags seed 001 uses exist with these kinds in SGLang 0.5.5
    assert sg["flags"]["--prefill-round-robin-balance"]["kind"] == "flag"
    assert sg["flags"]["--cuda-graph-bs"]["kind"] == "int+"
    assert "deep_gemm" in sg["flags"]["--moe-runner-backend"]["choices"]
    assert sg["flags"]["--moe-a2a-backend"]["choices"] == ["none", "deepep", "mooncake"]
    vl = launch.flag_definitions("vllm")
    assert vl["flags"]["-tp"]["alias_of"] == "--tensor-parallel-size"
    assert vl["flags"]["--no-enable-expert-parallel"]["negates"] == "--enable-expert-parallel"


def test_cli_text_mode_names_layout_limits_and_estimate():
    r = subprocess.run([str(MOECALC), "launch", "parse", "--framework", "sglang", "--version", "0.5.5", "--hardware", "h200",
                        "--file", str(SEED)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "attention TP1 × DP16, MoE TP1 × EP16" in r.stdout and "sglang 0.5.5" in r.stdout
    assert "max running requests per rank" in r.stdout and "decode (roofline)" in r.stdout


# ---------------------------------------------------------------- versions


def test_version_defaults_to_the_framework_profile_when_its_table_exists():
    # params/framework/sglang.yaml reads SGLang 0.5.23, whose table is present; vLLM's profile
    # reads 0.33.0, which has none: the newest table present (0.11.0)
    assert launch.versions("sglang") == ["0.5.5", "0.5.23"]  # numeric order, not text order
    assert launch.default_version("sglang") == "0.5.23" and launch.default_version("vllm") == "0.11.0"
    assert launch.flag_definitions("sglang")["version"] == "0.5.23"
    assert "--cuda-graph-max-bs-decode" in launch.flag_definitions("sglang")["flags"]


def test_a_0_5_23_command_parses_and_its_0_5_5_twin_under_0_5_5(v32, h200):
    """The same decode server spelled for each release: 0.5.23 renamed --cuda-graph-max-bs to
    --cuda-graph-max-bs-decode and dropped --prefill-round-robin-balance, and no longer forces DP
    attention for DeepSeek-V3.2 (DSA)."""
    base = ("python3 -m sglang.launch_server --model-path deepseek-ai/DeepSeek-V3.2 --tp-size 16 --dp-size 16 "
            "--enable-dp-attention --moe-a2a-backend deepep --disaggregation-mode decode --max-running-requests 1024 "
            "--mem-fraction-static 0.82 --nnodes 2 --node-rank 0 --dist-init-addr 10.0.0.1:5000 ")
    new = launch.parse("sglang", base + "--cuda-graph-max-bs-decode 60", v32, h200)
    old = launch.parse("sglang", base + "--cuda-graph-max-bs 60 --prefill-round-robin-balance", v32, h200, "0.5.5")
    assert (new.version, old.version) == ("0.5.23", "0.5.5")
    for L in (new, old):
        assert (L.layout.attention_tp, L.layout.attention_dp, L.layout.moe_tp, L.layout.ep) == (1, 16, 1, 16)
        assert L.running_per_rank == 1024 // 16
    # 0.5.23 appends max_bs itself to the capture list (cuda_graph_hook.py); 0.5.5 stops at 56
    assert max(new.graph_bs) == 60 and max(old.graph_bs) == 56
    with pytest.raises(InputError, match=r"sglang 0\.5\.5 has it \(--version 0\.5\.5\)"):
        launch.parse("sglang", base + "--cuda-graph-max-bs 60 --prefill-round-robin-balance", v32, h200)
    with pytest.raises(InputError, match="refuses a decode server"):  # 0.5.5 asserts the balance flag
        launch.parse("sglang", base + "--cuda-graph-max-bs 60", v32, h200, "0.5.5")
    # DSA without --enable-dp-attention: 0.5.5 forces DP attention (dp = tp), 0.5.23 keeps TP16
    plain = "python3 -m sglang.launch_server --model-path deepseek-ai/DeepSeek-V3.2 --tp-size 16 --nnodes 2 "
    assert launch.parse("sglang", plain, v32, h200).layout.attention_tp == 16
    assert launch.parse("sglang", plain, v32, h200, "0.5.5").layout.attention_dp == 16
    with pytest.raises(InputError, match=r"no sglang 0\.4\.0 flag table .*present: 0\.5\.5, 0\.5\.23"):
        launch.parse("sglang", plain, v32, h200, "0.4.0")


@pytest.mark.parametrize("version", ["0.5.5", "0.5.23"])
def test_emit_round_trips_at_each_sglang_version(version):
    m, hw = profiles.load_model("deepseek-v3"), profiles.load_hardware("h800")
    lay = launch.layout_for("sglang", 1, 16, 1, 16, hw.scale_up_domain)
    commands = launch.emit("sglang", lay, "deepseek-v3", "decode", 32, version=version)
    back = launch.parse("sglang", commands[0], m, hw, version)
    assert back.layout == lay and back.running_per_rank == 32 and max(back.graph_bs) == 32
    assert ("--prefill-round-robin-balance" in commands[0]) == (version == "0.5.5")
