"""The command line as a user meets it: run through subprocess with the venv's `moecalc`.

Every bad input must end with a non-zero exit and exactly one line on stderr, never a
traceback. All runs start at once in a module-scoped pool so the file stays fast.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from moecalc.reproduce import seed003_errata

ROOT = Path(__file__).resolve().parent.parent
MOECALC = Path(sys.executable).parent / "moecalc"
H800 = ROOT / "params" / "hardware" / "h800.yaml"
WORKLOAD = ROOT / "params" / "workload" / "seed-003.yaml"
MODEL = ROOT / "params" / "model" / "deepseek-v3.yaml"

DECODE = ["decode", "--policy", "seed003", "--tp", "1", "--batch", "32", "--kv-len", "4383"]


def _edited(path: Path, edit) -> str:
    """The YAML of `path` with `edit(data)` applied, as text."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    edit(data)
    return yaml.safe_dump(data, allow_unicode=True)


def _set(*keys, value):
    def edit(data):
        for key in keys[:-1]:
            data = data[key]
        data[keys[-1]] = value
    return edit


def _drop(key):
    return lambda data: data.pop(key)


# name → (argv, {file name: text or bytes} written to tmp_path, a regex stderr must match)
BAD: dict[str, tuple[list[str], dict, str]] = {
    "unknown-hardware": (DECODE + ["--hardware", "no-such-gpu"], {}, r"unknown hardware profile 'no-such-gpu'"),
    "missing-hardware": (DECODE, {}, r"required: --hardware"),
    "empty-hardware-name": (DECODE + ["--hardware", ""], {}, r"missing hardware profile"),
    "hardware-file-absent": (DECODE + ["--hardware", "{tmp}/absent.yaml"], {}, r"not found"),
    "unknown-model": (DECODE + ["--hardware", "h800", "--model", "gpt-9"], {}, r"unknown model profile"),
    "unknown-workload": (DECODE + ["--hardware", "h800", "--workload", "nope"], {}, r"unknown workload profile"),
    "broken-yaml": (DECODE + ["--hardware", "{tmp}/hw.yaml"], {"hw.yaml": "name: [unclosed\n"}, r"not valid YAML"),
    "empty-yaml": (DECODE + ["--hardware", "{tmp}/hw.yaml"], {"hw.yaml": ""}, r"empty profile"),
    "comment-only-yaml": (DECODE + ["--hardware", "{tmp}/hw.yaml"], {"hw.yaml": "# nothing\n"}, r"empty profile"),
    "list-yaml": (DECODE + ["--hardware", "{tmp}/hw.yaml"], {"hw.yaml": "- a\n- b\n"}, r"must be a mapping"),
    "scalar-yaml": (DECODE + ["--hardware", "{tmp}/hw.yaml"], {"hw.yaml": "just text\n"}, r"must be a mapping"),
    "binary-yaml": (DECODE + ["--hardware", "{tmp}/hw.yaml"], {"hw.yaml": b"\xff\xfe\x00\x81"}, r"not UTF-8"),
    "unsafe-yaml-tag": (DECODE + ["--hardware", "{tmp}/hw.yaml"], {"hw.yaml": "a: !!python/object:os.system {}\n"},
                        r"not valid YAML"),
    "unknown-key": (DECODE + ["--hardware", "{tmp}/hw.yaml"], {"hw.yaml": (H800, _set("colour", value="green"))},
                    r"'colour': unknown key"),
    "unknown-nested-key": (DECODE + ["--hardware", "{tmp}/hw.yaml"],
                           {"hw.yaml": (H800, _set("peak_tflops", "fp9", value=1))}, r"'peak_tflops.fp9': unknown key"),
    "missing-field": (DECODE + ["--hardware", "{tmp}/hw.yaml"], {"hw.yaml": (H800, _drop("memory_gb"))},
                      r"'memory_gb': missing"),
    "zero-field": (DECODE + ["--hardware", "{tmp}/hw.yaml"],
                   {"hw.yaml": (H800, _set("memory_bandwidth_gb_s", value=0))},
                   r"'memory_bandwidth_gb_s': must be > 0"),
    "negative-field": (DECODE + ["--hardware", "{tmp}/hw.yaml"], {"hw.yaml": (H800, _set("memory_gb", value=-80))},
                       r"'memory_gb': must be > 0"),
    "nan-field": (DECODE + ["--hardware", "{tmp}/hw.yaml"],
                  {"hw.yaml": (H800, _set("scale_out_bandwidth_gb_s", value=math.nan))}, r"must be finite"),
    "inf-field": (DECODE + ["--hardware", "{tmp}/hw.yaml"], {"hw.yaml": (H800, _set("memory_gb", value=math.inf))},
                  r"must be finite"),
    "text-field": (DECODE + ["--hardware", "{tmp}/hw.yaml"], {"hw.yaml": (H800, _set("memory_gb", value="80 GB"))},
                   r"must be a number"),
    "subnormal-field": (DECODE + ["--hardware", "{tmp}/hw.yaml"],
                        {"hw.yaml": (H800, _set("memory_bandwidth_gb_s", value=1e-310))}, r"≥ 1e-12"),
    "nested-zero": (DECODE + ["--hardware", "{tmp}/hw.yaml"], {"hw.yaml": (H800, _set("peak_tflops", "fp8", value=0))},
                    r"'peak_tflops.fp8': must be > 0"),
    "nested-negative": (DECODE + ["--hardware", "{tmp}/hw.yaml"],
                        {"hw.yaml": (H800, _set("peak_tflops", "bf16", value=-1.5))},
                        r"'peak_tflops.bf16': must be > 0"),
    "nested-nan": (DECODE + ["--hardware", "{tmp}/hw.yaml"],
                   {"hw.yaml": (H800, _set("peak_tflops", "fp8", value=math.nan))},
                   r"'peak_tflops.fp8': must be finite"),
    "nested-not-a-map": (DECODE + ["--hardware", "{tmp}/hw.yaml"],
                         {"hw.yaml": (H800, _set("peak_tflops", value=[1, 2]))}, r"'peak_tflops': must be a mapping"),
    "fractional-int": (DECODE + ["--hardware", "{tmp}/hw.yaml"], {"hw.yaml": (H800, _set("compute_units", value=1.5))},
                       r"'compute_units': must be an integer"),
    "huge-yaml-int": (DECODE + ["--hardware", "{tmp}/hw.yaml"],
                      {"hw.yaml": "name: x\nmemory_gb: " + "9" * 5000 + "\n"}, r"not valid YAML"),
    "workload-hit-rate": (DECODE + ["--hardware", "h800", "--workload", "{tmp}/wl.yaml"],
                          {"wl.yaml": (WORKLOAD, _set("kv_cache_hit_rate", value=1.5))}, r"'kv_cache_hit_rate'"),
    "workload-zero-prompt": (DECODE + ["--hardware", "h800", "--workload", "{tmp}/wl.yaml"],
                             {"wl.yaml": (WORKLOAD, _set("prompt_len", value=0))}, r"'prompt_len': must be > 0"),
    "model-zero-heads": (DECODE + ["--hardware", "h800", "--model", "{tmp}/m.yaml"],
                         {"m.yaml": (MODEL, _set("num_attention_heads", value=0))}, r"'num_attention_heads'"),
    "model-all-dense": (DECODE + ["--hardware", "h800", "--model", "{tmp}/m.yaml"],
                        {"m.yaml": (MODEL, _set("first_k_dense_replace", value=61))}, r"'first_k_dense_replace'"),
    "tp-not-dividing-heads": (["decode", "--policy", "seed003", "--hardware", "h800", "--tp", "3", "--batch", "32", "--kv-len", "100"], {},
                              r"TP 3 does not divide the 128 attention heads"),
    "prefill-tp-not-dividing-heads": (["prefill", "--policy", "seed003", "--hardware", "h800", "--tp", "3"], {}, r"TP 3 does not divide"),
    "prefill-tp-beyond-node": (["prefill", "--policy", "seed003", "--hardware", "h800", "--tp", "16"], {}, r"TP 16 must divide"),
    "tp-zero": (["decode", "--policy", "seed003", "--hardware", "h800", "--tp", "0", "--batch", "32", "--kv-len", "100"], {}, r"--tp"),
    "batch-zero": (["decode", "--policy", "seed003", "--hardware", "h800", "--tp", "1", "--batch", "0", "--kv-len", "100"], {}, r"--batch"),
    "batch-negative": (["decode", "--policy", "seed003", "--hardware", "h800", "--tp", "1", "--batch", "-4", "--kv-len", "100"], {},
                       r"--batch"),
    "batch-fraction": (["decode", "--policy", "seed003", "--hardware", "h800", "--tp", "1", "--batch", "1.5", "--kv-len", "100"], {},
                       r"--batch: must be a positive integer"),
    "batch-text": (["decode", "--policy", "seed003", "--hardware", "h800", "--tp", "1", "--batch", "many", "--kv-len", "100"], {},
                   r"--batch: must be a positive integer"),
    "batch-astronomical": (["decode", "--policy", "seed003", "--hardware", "h800", "--tp", "1", "--batch", "1" + "0" * 400, "--kv-len",
                            "100"], {}, r"--batch: must be at most"),
    "kv-len-zero": (["decode", "--policy", "seed003", "--hardware", "h800", "--tp", "1", "--batch", "1", "--kv-len", "0"], {}, r"--kv-len"),
    "kv-len-fraction": (["decode", "--policy", "seed003", "--hardware", "h800", "--tp", "1", "--batch", "1", "--kv-len", "2.5"], {},
                        r"--kv-len"),
    "seq-len-zero": (["prefill", "--policy", "seed003", "--hardware", "h800", "--tp", "4", "--seq-len", "0"], {}, r"--seq-len"),
    "seq-len-negative": (["prefill", "--policy", "seed003", "--hardware", "h800", "--tp", "4", "--seq-len", "-1"], {}, r"--seq-len"),
    "seq-len-fraction": (["prefill", "--policy", "seed003", "--hardware", "h800", "--tp", "4", "--seq-len", "3.5"], {}, r"--seq-len"),
    "batch-does-not-fit": (["decode", "--policy", "seed003", "--hardware", "h800", "--tp", "1", "--batch", "1000", "--kv-len", "4383"], {},
                           r"batch 1000 does not fit .* over by [\d,.]+ GB"),
    "unknown-subcommand": (["frobnicate"], {}, r"invalid choice: 'frobnicate'"),
    "no-subcommand": ([], {}, r"required"),
    "unknown-option": (DECODE + ["--hardware", "h800", "--turbo"], {}, r"unrecognized arguments: --turbo"),
    "unknown-seed": (["reproduce", "seed-999"], {}, r"invalid choice: 'seed-999'"),
    "errata-as-json": (["reproduce", "seed-003", "--errata", "--json"], {}, r"cannot be combined with --json"),
}

GOOD: dict[str, list[str]] = {
    "decode": ["decode", "--policy", "seed003", "--hardware", "h800", "--tp", "1", "--batch", "32", "--kv-len", "4383", "--json"],
    "decode-copy": ["decode", "--policy", "seed003", "--hardware", "{tmp}/copy/h800.yaml", "--tp", "1", "--batch", "32", "--kv-len", "4383",
                    "--json"],
    "prefill": ["prefill", "--policy", "seed003", "--hardware", "h800", "--tp", "4", "--json"],
    "prefill-copy": ["prefill", "--policy", "seed003", "--hardware", "{tmp}/copy/h800.yaml", "--tp", "4", "--json"],
    "decode-text": ["decode", "--policy", "seed003", "--hardware", "h20", "--tp", "4", "--batch", "128", "--kv-len", "4383"],
    "reproduce": ["reproduce", "seed-003", "--json"],
    "errata": ["reproduce", "seed-003", "--errata"],
}


def _write(tmp: Path, files: dict) -> None:
    for name, content in files.items():
        path = tmp / name
        if isinstance(content, tuple):
            content = _edited(*content)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(MOECALC), *argv], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every case of this file, run at once: name → CompletedProcess."""
    assert MOECALC.exists(), f"no moecalc next to {sys.executable}"
    jobs = {}
    for name, (argv, files, _) in BAD.items():
        tmp = tmp_path_factory.mktemp(name)
        _write(tmp, files)
        jobs[name] = [a.replace("{tmp}", str(tmp)) for a in argv]
    tmp = tmp_path_factory.mktemp("good")
    (tmp / "copy").mkdir()
    shutil.copy(H800, tmp / "copy" / "h800.yaml")
    for name, argv in GOOD.items():
        jobs[name] = [a.replace("{tmp}", str(tmp)) for a in argv]
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = {name: pool.submit(_run, argv) for name, argv in jobs.items()}
        return {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line(runs, case):
    result = runs[case]
    pattern = BAD[case][2]
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("moecalc: error: ")
    assert re.search(pattern, lines[0]), lines[0]
    assert result.stdout == ""


def _numbers(data, prefix=""):
    """Every number in a JSON document, by its path."""
    if isinstance(data, dict):
        out = {}
        for key, value in data.items():
            out.update(_numbers(value, f"{prefix}/{key}"))
        return out
    if isinstance(data, list):
        out = {}
        for i, value in enumerate(data):
            out.update(_numbers(value, f"{prefix}/{i}"))
        return out
    return {prefix: data} if isinstance(data, (int, float)) and not isinstance(data, bool) else {}


def test_decode_json(runs):
    result = runs["decode"]
    assert result.returncode == 0 and result.stderr == ""
    data = json.loads(result.stdout)
    for key in ("tpot_ms", "tpot_overlap_ms", "tokens_per_s_per_user", "tokens_per_s_per_gpu",
                "memory_per_gpu_gb", "memory_available_gb", "fits"):
        assert key in data, key
    assert data["fits"] is True
    assert data["memory_per_gpu_gb"] <= data["memory_available_gb"]
    # seed 003's TL;DR, H800(TP1) batch 32
    assert round(data["tpot_overlap_ms"], 3) == 9.858
    assert round(data["tpot_ms"], 3) == 17.023
    assert data["tokens_per_s_per_gpu"] == pytest.approx(32 * data["tokens_per_s_per_user"])


@pytest.mark.parametrize("command", ["decode", "prefill"])
def test_profile_copy_gives_identical_numbers(runs, command):
    original, copy = runs[command], runs[f"{command}-copy"]
    assert original.returncode == 0 and copy.returncode == 0, (original.stderr, copy.stderr)
    a, b = _numbers(json.loads(original.stdout)), _numbers(json.loads(copy.stdout))
    assert a and a == b


def test_prefill_json_is_the_seeds(runs):
    data = json.loads(runs["prefill"].stdout)
    assert round(data["tokens_per_s_per_node_overlap"], 1) == 52240.1  # seed 003 TL;DR


def test_decode_text_output(runs):
    result = runs["decode-text"]
    assert result.returncode == 0 and result.stderr == ""
    assert "TPOT" in result.stdout and "35.367" in result.stdout  # seed 003 TL;DR, H20(TP4) batch 32 per GPU
    assert "128 sequences per attention-DP rank (32 per GPU)" in result.stdout  # --batch is per rank


def test_reproduce_json(runs):
    result = runs["reproduce"]
    assert result.returncode == 0
    records = json.loads(result.stdout)
    assert len(records) >= 140 and all(set(r) >= {"published", "computed", "match"} for r in records)


def test_errata_flag_prints_the_page(runs):
    result = runs["errata"]
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout == seed003_errata.render_markdown()
