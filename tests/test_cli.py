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

# The nine causes of issue 10, each with the command that showed it.
ROOF = ["decode", "--hardware", "h800", "--tp", "1", "--dp", "128", "--ep", "128", "--batch", "128", "--kv-len", "4096"]
SEARCH = ["search", "--hardware", "h800", "--devices", "128"]
BAD.update({
    # 1. a file name too long for the file system
    "long-file-name": (DECODE + ["--hardware", "a" * 300 + ".yaml"], {}, r"hardware profile a+…: File name too long"),
    "long-profile-name": (DECODE + ["--hardware", "a" * 300], {}, r"File name too long"),
    # 2. infinities: an impossible multiplier, huge profile values (checked once in SI units)
    "imbalance-impossible": (ROOF + ["--expert-imbalance", "1e300"], {},
                             r"expert imbalance 1e\+300 is impossible: with EP 128 .* at most 32 ×"),
    "imbalance-impossible-json": (ROOF + ["--expert-imbalance", "1e300", "--json"], {}, r"is impossible"),
    "imbalance-above-fanout": (ROOF + ["--expert-imbalance", "32.5"], {}, r"at most 32 ×"),
    "huge-latency": (ROOF + ["--hardware", "{tmp}/hw.yaml"],
                     {"hw.yaml": (H800, _set("efficiency", "kernel_latency_us", "value", value=1.7e308))},
                     r"'efficiency.kernel_latency_us.value': is too large, got 1.7e\+308 \(1.7e\+302 in SI units, at most 1e\+30"),
    "huge-peak": (ROOF + ["--hardware", "{tmp}/hw.yaml"], {"hw.yaml": (H800, _set("peak_tflops", "fp8", value=1e300))},
                  r"'peak_tflops.fp8': is too large"),
    "huge-bandwidth-after-units": (ROOF + ["--hardware", "{tmp}/hw.yaml"],
                                   {"hw.yaml": (H800, _set("memory_bandwidth_gb_s", value=1e25))},
                                   r"'memory_bandwidth_gb_s': is too large, got 1e\+25 \(1e\+34 in SI units"),
    "imbalance-infinite-text": (ROOF + ["--expert-imbalance", "inf"], {}, r"--expert-imbalance: must be a number"),
    # 3. integers: ASCII digits only, one limit everywhere (search's --batch included)
    "search-batch-31-digits": (SEARCH + ["--batch", "1" * 31], {}, r"--batch: must be at most 9,007,199,254,740,992"),
    "search-batch-int64-max": (SEARCH + ["--batch", "9223372036854775807"], {}, r"--batch: must be at most 9,007,199"),
    "search-batch-underscore": (SEARCH + ["--batch", "1_28"], {}, r"--batch: must be a positive integer \(digits"),
    "search-batch-plus": (SEARCH + ["--batch", "+128"], {}, r"--batch: must be a positive integer"),
    "search-batch-arabic-indic": (SEARCH + ["--batch", "١٢٨"], {}, r"--batch: must be a positive integer"),
    "decode-batch-underscore": (ROOF[:-4] + ["--batch", "1_28", "--kv-len", "4096"], {}, r"--batch: must be a positive"),
    "decode-batch-plus": (ROOF[:-4] + ["--batch", "+128", "--kv-len", "4096"], {}, r"--batch: must be a positive"),
    "decode-batch-arabic-indic": (ROOF[:-4] + ["--batch", "١٢٨", "--kv-len", "4096"], {}, r"--batch: must be a positive"),
    "decode-batch-past-limit": (ROOF[:-4] + ["--batch", "9007199254740993", "--kv-len", "4096"], {},
                                r"--batch: must be at most 9,007,199,254,740,992"),
    "devices-fullwidth": (["search", "--hardware", "h800", "--devices", "１２８"], {}, r"--devices: must be a positive"),
    # 4. a search too large for this machine, refused before it allocates (one range or several)
    "search-too-large": (SEARCH + ["--batch", "1-1000000"], {}, r"search of 128,000,000 layouts is too large.*24 GiB"),
    "search-ranges-too-large": (SEARCH + ["--batch", "1-900000,1000001-1900000"], {}, r"too large.*24 GiB"),
    "search-devices-too-large": (["search", "--hardware", "h800", "--devices", "64,128,256", "--batch", "1-60000"], {},
                                 r"layouts is too large"),
    # 5. --csv targets: refused whole, nothing left behind (see test_csv_failures_leave_nothing)
    "csv-dev-full": (SEARCH + ["--batch", "1-4", "--csv", "/dev/full"], {}, r"--csv: cannot write /dev/full"),
    "csv-proc": (SEARCH + ["--batch", "1-4", "--csv", "/proc/version"], {}, r"--csv: cannot write /proc/version"),
    "csv-empty": (SEARCH + ["--batch", "1-4", "--csv", ""], {}, r"--csv: must be a file name"),
    "csv-no-directory": (SEARCH + ["--batch", "1-4", "--csv", "{tmp}/absent/x.csv"], {}, r"No such file or directory"),
    "csv-long-name": (SEARCH + ["--batch", "1-4", "--csv", "{tmp}/" + "c" * 300 + ".csv"], {}, r"File name too long"),
    # 7. a key given twice
    "duplicate-key": (DECODE + ["--hardware", "{tmp}/hw.yaml"],
                      {"hw.yaml": H800.read_text(encoding="utf-8") + "memory_gb: 1\n"},
                      r"'memory_gb': given twice \(line \d+ and line \d+\)"),
    "duplicate-nested-key": (DECODE + ["--hardware", "h800", "--workload", "{tmp}/wl.yaml"],
                             {"wl.yaml": "name: x\nprompt_len: 1\nprompt_len: 2\n"}, r"'prompt_len': given twice"),
    # 8. control characters in a name, a path or an argument: escaped, still one line
    "newline-in-name": (DECODE + ["--hardware", "a\nb"], {}, r"unknown hardware profile 'a\\nb'"),
    "newline-in-path": (DECODE + ["--hardware", "{tmp}/a\nb.yaml"], {}, r"not found: .*a\\nb\.yaml"),
    "escape-in-name": (DECODE + ["--hardware", "a\x1b[2Jb"], {}, r"'a\\x1b\[2Jb'"),
    "newline-in-batch": (SEARCH + ["--batch", "1\n2"], {}, r"--batch: .*'1\\n2'"),
    "newline-in-tp": (["decode", "--hardware", "h800", "--tp", "1\n2", "--batch", "1", "--kv-len", "1"], {},
                      r"--tp: must be a positive integer .*'1\\n2'"),
})

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
    assert result.returncode == 2
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


# ---------------------------------------------------------------- streams and files (issue 10, causes 5, 6, 9)


def _popen(argv, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(MOECALC), *argv], capture_output=False, text=True, timeout=60, **kw)


def _one_error_line(text: str, pattern: str) -> None:
    assert "Traceback" not in text
    lines = text.splitlines()
    assert len(lines) == 1 and lines[0].startswith("moecalc: error: "), text
    assert re.search(pattern, lines[0]), lines[0]


def test_full_stdout_is_one_line_and_exit_1():
    with open("/dev/full", "w") as full:
        r = _popen(["reproduce", "seed-003", "--json"], stdout=full, stderr=subprocess.PIPE)
    assert r.returncode == 1
    _one_error_line(r.stderr, r"cannot write the output to stdout: No space left on device")


def test_closed_stdout_is_one_line_and_exit_1():
    import os

    r = _popen(["reproduce", "seed-003", "--json"], stderr=subprocess.PIPE, preexec_fn=lambda: os.close(1))
    assert r.returncode == 1
    _one_error_line(r.stderr, r"stdout is closed")


def test_broken_pipe_is_one_line_and_exit_1():
    p = subprocess.Popen([str(MOECALC), "reproduce", "seed-003", "--json"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    p.stdout.close()  # the reader is gone before anything is written
    err = p.stderr.read()
    assert p.wait(timeout=60) == 1
    _one_error_line(err, r"cannot write the output to stdout: Broken pipe")


def test_csv_on_a_full_disk_leaves_nothing(tmp_path):
    """A file-size limit stands in for a full file system: the write fails half-way."""
    import resource
    import signal

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails (EFBIG) instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    target = tmp_path / "layouts.csv"
    r = _popen(["search", "--hardware", "h800", "--devices", "128", "--batch", "1-64", "--csv", str(target)],
               stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=limit)
    assert r.returncode == 2 and r.stdout == ""
    _one_error_line(r.stderr, r"--csv: cannot write .*layouts\.csv: File too large")
    assert list(tmp_path.iterdir()) == []  # no truncated CSV, no temporary file


def test_csv_failure_keeps_the_old_file(tmp_path):
    target = tmp_path / "layouts.csv"
    target.write_text("old\n", encoding="utf-8")
    r = _popen(["search", "--hardware", "h800", "--devices", "128", "--batch", "1-4", "--csv", str(target),
                "--workload", str(tmp_path / "absent.yaml")], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert r.returncode == 2
    assert target.read_text(encoding="utf-8") == "old\n" and len(list(tmp_path.iterdir())) == 1


def test_csv_is_written_whole(tmp_path):
    target = tmp_path / "layouts.csv"
    r = _popen(["search", "--hardware", "h800", "--devices", "8", "--batch", "1-3", "--csv", str(target)],
               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert r.returncode == 0, r.stderr
    lines = target.read_text(encoding="utf-8").splitlines()
    # 8 devices: tp ∈ {1, 2, 4, 8} × moe_tp ∈ {1, 2, 4, 8} = 16 layouts × 3 batches × 2 schedules
    assert len(lines) == 1 + 16 * 3 * 2
    assert [p.name for p in tmp_path.iterdir()] == ["layouts.csv"]


@pytest.mark.parametrize("edit, pattern", [
    (lambda t: t.replace("{m: 64,", '{m: "x",', 1), r"kernels\.yaml: points\[0\]: field 'conditions\.m': must be a positive"),
    (lambda t: t.replace("{m: 64,", "{m: 64, m: 65,", 1), r"kernels\.yaml: field 'm': given twice"),
    (lambda t: t.replace("{m: 64,", "{m: 1e999,", 1), r"conditions\.m': must be a positive integer"),
])
def test_malformed_measurement_file_is_one_line(tmp_path, edit, pattern):
    import os

    params = tmp_path / "params"
    shutil.copytree(ROOT / "params", params)
    kernels = params / "measurements" / "kernels.yaml"
    text = kernels.read_text(encoding="utf-8")
    assert "{m: 64," in text
    kernels.write_text(edit(text), encoding="utf-8")
    r = _popen(["calibrate"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
               env={**os.environ, "MOECALC_PARAMS": str(params)})
    assert r.returncode == 2 and r.stdout == ""
    _one_error_line(r.stderr, pattern)


def test_systems_file_with_a_duplicate_key_is_refused(tmp_path):
    import os

    params = tmp_path / "params"
    shutil.copytree(ROOT / "params", params)
    systems = params / "measurements" / "systems.yaml"
    systems.write_text(systems.read_text(encoding="utf-8").replace("    published:", "    published: 1\n    published:", 1),
                       encoding="utf-8")
    r = _popen(["validate"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
               env={**os.environ, "MOECALC_PARAMS": str(params)})
    assert r.returncode == 2
    _one_error_line(r.stderr, r"systems\.yaml: field 'published': given twice")


# ---------------------------------------------------------------- the one finiteness check


def test_emit_refuses_what_is_not_finite_or_wrongly_negative(capsys):
    import argparse

    from moecalc import cli
    from moecalc.errors import InputError

    args = argparse.Namespace(json=True, hardware="h800", batch=3, run=None, command="decode")
    for bad, where in (({"a": {"tpot_ms": math.inf}}, "a.tpot_ms"), ({"rows": [{"x": 1.0}, {"x": math.nan}]}, r"rows\[1\]\.x"),
                       ({"memory_gb": -1.0}, "memory_gb")):
        with pytest.raises(InputError, match=rf"the result {where} would be .*--hardware h800, --batch 3"):
            cli._emit(args, bad, lambda: "")
    assert capsys.readouterr().out == ""
    # signed on purpose: errors and changes
    assert cli._emit(args, {"error_pct": -3.5, "tbo_change": -1.0, "x": [0.0, 2]}, lambda: "") == 0
    assert json.loads(capsys.readouterr().out) == {"error_pct": -3.5, "tbo_change": -1.0, "x": [0.0, 2]}


def test_search_size_check_is_reusable():
    from moecalc import search
    from moecalc.errors import InputError

    search.check_size(search.MAX_LAYOUTS, "plan")
    with pytest.raises(InputError, match=r"plan of 20,000,001 layouts is too large.*24 GiB of memory, 2 cores"):
        search.check_size(search.MAX_LAYOUTS + 1, "plan")
