"""Build the book: execute every chapter × hardware profile, then render HTML.

``moecalc book`` (and ``make book``) does, in order:

1. **Plan.** Every ``book/chapters/*.md`` is a jupytext MyST notebook whose front matter
   says how often it runs::

       moecalc:
         per: hardware        # once per params/hardware/*.yaml, `model` (per params/model/*.yaml), or `once`
         order: 20            # position in the table of contents
         part: Seed 003       # (once-chapters) the TOC part it sits in
         children: [errata-seed-003]   # (optional) pages listed under it
         requires: [peak_tflops.fp8]   # (optional) hardware YAML fields a page needs

   A ``per: hardware`` chapter becomes one job per hardware profile, with papermill
   parameter ``hardware=<stem>``, written to ``book/executed/<stem>/<chapter>.ipynb``; a
   ``per: once`` chapter one job, written to ``book/executed/common/<chapter>.ipynb``; a
   ``per: model`` chapter one job per model profile, with parameter ``model=<stem>``, written
   to ``book/executed/common/<chapter>-<stem>.ipynb`` (dots as dashes) in its part. A
   profile that lacks a field the chapter ``requires`` gets no page of that chapter.
2. **Skip what is current.** Each job's inputs are hashed: the chapter source, its
   parameters, every file under ``moecalc/``, the versions of the packages that shape
   outputs, and the ``params/`` files the page read when it last ran (the driver appends a
   cell that lists them, and removes it again). The hash and that list are stored in the
   executed notebook's metadata (``moecalc.inputs``, ``moecalc.reads``); a job runs only when
   its notebook is missing, its hash differs, a file it read or a CSV it links to is gone,
   or ``--force`` is given. So a new hardware profile executes its own pages only.
3. **Execute** the stale jobs with papermill's Python API in a process pool (one kernel per
   worker at a time), then make the result deterministic: volatile metadata stripped
   (timings, papermill's timestamps and durations, versions), cell ids derived from the
   chapter and the cell index. A notebook is rewritten only when its bytes change.
4. **Prune** executed notebooks, profile folders and CSV tables that no job produces any
   more (a removed profile or chapter takes its pages with it).
5. **Table of contents**, generated into ``book/_build/_toc.yml`` (never committed), and
   **HTML** with Jupyter Book into ``book/_build/html``, warnings as errors by default.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .errors import InputError

ROOT = Path(__file__).resolve().parent.parent
BOOK_DIR = ROOT / "book"
CHAPTERS = "chapters"  # book/chapters/*.md: the sources
EXECUTED = "executed"  # book/executed/<profile>/<chapter>.ipynb: committed outputs
COMMON = "common"  # the folder of once-chapters (and per-model ones, as <chapter>-<model>)
PER = ("hardware", "once", "model")
BUILD = "_build"
KERNEL = "python3"
# Packages whose versions can change an output's bytes (reprs, PNG encoding, numerics).
VERSIONED = ("numpy", "matplotlib", "ipykernel", "ipython", "pyyaml", "nbformat")
# Metadata that is kept on a cell; everything else (papermill, execution timings) goes.
CELL_METADATA_KEEP = ("tags", "mystnb")
HASHED_SUFFIXES = (".py", ".yaml", ".yml", ".json", ".toml", ".txt", ".csv")
_FRONT = re.compile(r"\A---\n(.*?)\n---\n", re.S)
_CSV_LINK = re.compile(r"<(tables/[A-Za-z0-9_.-]+\.csv)>")
# Appended to every page before it runs, removed after: which profiles did it read?
READS_CELL = "import json, moecalc.profiles\nprint(json.dumps(sorted(map(str, moecalc.profiles.FILES_READ))))"


# ---------------------------------------------------------------- plan


@dataclass(frozen=True)
class Chapter:
    """One source notebook and how often it runs."""

    name: str  # file stem: the page's file name in book/executed/<profile>/
    path: Path
    per: str  # "hardware", "once" or "model"
    order: float
    part: str | None = None  # TOC caption of a once-chapter's part
    children: tuple[str, ...] = ()  # pages (docnames relative to book/) listed under it
    requires: tuple[str, ...] = ()  # dotted hardware-YAML fields a per-hardware page needs


@dataclass(frozen=True)
class Job:
    chapter: Chapter
    profile: str  # hardware stem, or COMMON
    parameters: Mapping[str, Any]
    output: Path

    @property
    def name(self) -> str:
        """The page's file stem: the chapter's, with ``-<model>`` for a per-model chapter."""
        return self.output.stem

    @property
    def docname(self) -> str:
        return f"{EXECUTED}/{self.profile}/{self.name}"


def front_matter(path: Path) -> dict[str, Any]:
    """The YAML front matter of a MyST markdown file ({} when it has none)."""
    import yaml

    match = _FRONT.match(path.read_text(encoding="utf-8"))
    if not match:
        return {}
    data = yaml.safe_load(match.group(1)) or {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: front matter must be a mapping")
    return data


def discover_chapters(book_dir: Path = BOOK_DIR) -> list[Chapter]:
    """Every chapter source with a ``moecalc:`` front-matter entry, in TOC order."""
    found = []
    for path in sorted((book_dir / CHAPTERS).glob("*.md")):
        meta = front_matter(path).get("moecalc")
        if meta is None:
            continue
        if not isinstance(meta, dict):
            raise InputError(f"{path}: front matter 'moecalc' must be a mapping")
        per = meta.get("per")
        if per not in PER:
            raise InputError(f"{path}: front matter 'moecalc.per' must be one of {', '.join(PER)}, got {per!r}")
        order = meta.get("order", 1000)
        if isinstance(order, bool) or not isinstance(order, (int, float)):
            raise InputError(f"{path}: front matter 'moecalc.order' must be a number, got {order!r}")
        children = meta.get("children", [])
        if not isinstance(children, list) or not all(isinstance(c, str) for c in children):
            raise InputError(f"{path}: front matter 'moecalc.children' must be a list of page names")
        requires = meta.get("requires", [])
        if not isinstance(requires, list) or not all(isinstance(r, str) for r in requires):
            raise InputError(f"{path}: front matter 'moecalc.requires' must be a list of hardware fields")
        found.append(Chapter(path.stem, path, per, float(order), meta.get("part"), tuple(children), tuple(requires)))
    return sorted(found, key=lambda c: (c.order, c.name))


def hardware_profiles(params_dir: Path) -> list[str]:
    return sorted(p.stem for p in (params_dir / "hardware").glob("*.yaml"))


def model_profiles(params_dir: Path | None) -> list[str]:
    from .profiles import PARAMS_DIR

    return sorted(p.stem for p in ((params_dir or PARAMS_DIR) / "model").glob("*.yaml"))


def has_fields(data: Mapping[str, Any], fields: Iterable[str]) -> bool:
    """True when every dotted field (``peak_tflops.fp8``) is present in the mapping."""
    for dotted in fields:
        node: Any = data
        for key in dotted.split("."):
            if not isinstance(node, Mapping) or node.get(key) is None:
                return False
            node = node[key]
    return True


def read_profile(params_dir: Path, stem: str, kind: str = "hardware") -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load((params_dir / kind / f"{stem}.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def plan(chapters: Sequence[Chapter], profiles: Sequence[str], book_dir: Path = BOOK_DIR,
         params_dir: Path | None = None) -> list[Job]:
    """Every (chapter, profile) pair to execute, in TOC order. A per-hardware chapter skips
    the profiles (read from `params_dir`) that lack a field it ``requires``."""
    if COMMON in profiles:
        raise InputError(f"a hardware profile may not be named {COMMON!r}: that folder holds the once-chapters")
    data = {p: read_profile(params_dir, p) for p in profiles} if params_dir else {}
    jobs = []
    for ch in chapters:
        if ch.per == "hardware":
            targets = [(p, {"hardware": p}, ch.name) for p in profiles
                       if not ch.requires or (p in data and has_fields(data[p], ch.requires))]
        elif ch.per == "model":  # once per model profile, papermill parameter model=<stem>
            # (dots become dashes in the file name: Sphinx would read "v3.2" as a suffix)
            targets = [(COMMON, {"model": m}, f"{ch.name}-{m.replace('.', '-')}") for m in model_profiles(params_dir)]
        else:
            targets = [(COMMON, {}, ch.name)]
        for profile, parameters, stem in targets:
            out = book_dir / EXECUTED / profile / f"{stem}.ipynb"
            jobs.append(Job(ch, profile, parameters, out))
    return jobs


# ---------------------------------------------------------------- input hashes


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": ".".join(map(str, sys.version_info[:3]))}
    for name in VERSIONED:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


def tree_digest(dirs: Iterable[Path], root: Path) -> str:
    """SHA-256 over the relative path and bytes of every source/data file under `dirs`."""
    h = hashlib.sha256()
    for d in dirs:
        for path in sorted(p for p in d.rglob("*") if p.is_file()):
            if "__pycache__" in path.parts or path.suffix not in HASHED_SUFFIXES:
                continue
            h.update(path.relative_to(root).as_posix().encode() + b"\0")
            h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def common_digest(root: Path = ROOT, versions: Mapping[str, str] | None = None) -> str:
    """What every page depends on: moecalc/ and package versions (the profiles it reads are
    per page: see :func:`job_digest`)."""
    versions = _versions() if versions is None else versions
    tree = tree_digest([root / "moecalc"], root)
    return hashlib.sha256(json.dumps({"tree": tree, "versions": dict(versions), "kernel": KERNEL},
                                     sort_keys=True).encode()).hexdigest()


def relative_reads(paths: Iterable[str], root: Path = ROOT) -> list[str]:
    """The files a page read, as paths relative to `root` where they lie under it, sorted."""
    top = root.resolve()
    out = set()
    for p in paths:
        path = Path(p).resolve()
        out.add(path.relative_to(top).as_posix() if path.is_relative_to(top) else path.as_posix())
    return sorted(out)


def job_digest(job: Job, common: str, reads: Sequence[str] = (), root: Path = ROOT) -> str | None:
    """The hash of one job's inputs: its source, its parameters, the common digest and the
    bytes of every file in `reads` (relative to `root`); None when one of them is gone."""
    h = hashlib.sha256()
    h.update(job.chapter.path.read_bytes())
    h.update(json.dumps(dict(job.parameters), sort_keys=True).encode())
    h.update(job.profile.encode())
    h.update(common.encode())
    for name in reads:
        path = root / name
        if not path.is_file():
            return None
        h.update(name.encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def stored_meta(path: Path) -> dict[str, Any] | None:
    """The ``moecalc`` metadata of an executed notebook, or None if unreadable."""
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    meta = nb.get("metadata", {}).get("moecalc")
    return meta if isinstance(meta, dict) else None


def is_current(job: Job, common: str, root: Path = ROOT) -> bool:
    """True when the executed notebook exists, was made from the inputs it has now (its
    source, parameters, the common digest and the files it read), and every CSV table it
    links to is there."""
    meta = stored_meta(job.output)
    if not meta or not isinstance(meta.get("reads", []), list):
        return False
    digest = job_digest(job, common, meta.get("reads", []), root)
    if digest is None or meta.get("inputs") != digest:
        return False
    return all((job.output.parent / t).is_file() for t in meta.get("tables", []))


# ---------------------------------------------------------------- determinism


def cell_id(chapter: str, index: int) -> str:
    """A stable nbformat cell id (``[a-zA-Z0-9-_]{1,64}``) from the chapter and cell index."""
    base = re.sub(r"[^A-Za-z0-9_-]", "-", chapter)[:56]
    return f"{base}-{index:03d}"


def table_links(nb: Mapping[str, Any]) -> list[str]:
    """The ``tables/*.csv`` files a notebook's outputs link to, sorted."""
    found = set()
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []):
            text = out.get("data", {}).get("text/markdown", "")
            if isinstance(text, list):
                text = "".join(text)
            found.update(_CSV_LINK.findall(text))
    return sorted(found)


def provenance(source: Path, reads: Sequence[str], root: Path = ROOT) -> str:
    """The line that ends every page, for citing it: the moecalc version, a content hash of
    the page's source and of every params file it read. No commit id or date, so that the
    page stays byte-identical when nothing it depends on changed."""
    from . import __version__

    def short(path: Path) -> str:
        return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()[:12]

    src = source.resolve()
    name = src.relative_to(root.resolve()).as_posix() if src.is_relative_to(root.resolve()) else src.name
    files = [f"`{r}` {short(root / r)}" for r in reads if (root / r).is_file()]
    return (f"<small>Provenance: moecalc {__version__}; page source `{name}` {short(src)}; "
            f"params read: {', '.join(files) if files else 'none'}.</small>")


def retitle(nb, gpu: str) -> None:
    """Prefix the page's first ``# Title`` with the GPU's name: ``# H20 · Decode``."""
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        lines = cell.source.split("\n")
        for i, line in enumerate(lines):
            if line.startswith("# "):
                lines[i] = f"# {gpu} · {line[2:]}"
                cell.source = "\n".join(lines)
                return


def _literal(value: Any) -> str:
    """A parameter as Python source, strings in double quotes as the chapters write them."""
    return json.dumps(value, ensure_ascii=False) if isinstance(value, str) else repr(value)


def merge_parameters(nb: dict[str, Any], parameters: Mapping[str, Any]) -> None:
    """Fold papermill's injected cell into the page's ``parameters`` cell, so that the page
    shows one cell with the values it ran with (``hardware = "h20"``, not the default and then
    an override), and collapse it (``hide-input``). Re-running the cell gives the same state."""
    import ast

    cells = nb.get("cells", [])
    tags = lambda c: c.get("metadata", {}).get("tags", [])  # noqa: E731
    injected = [i for i, c in enumerate(cells) if "injected-parameters" in tags(c)]
    target = next((c for c in cells if "parameters" in tags(c)), None)
    if target is None:
        return
    if "hide-input" not in tags(target):  # collapsed, with or without an override
        target.setdefault("metadata", {})["tags"] = [*tags(target), "hide-input"]
    if not injected:
        return
    src = target["source"] if isinstance(target["source"], str) else "".join(target["source"])
    lines = src.split("\n")
    todo = dict(parameters)
    for node in sorted(ast.parse(src).body, key=lambda n: -n.lineno):  # bottom up: line numbers stay valid
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id in todo):
            name = node.targets[0].id
            rest = lines[node.end_lineno - 1][node.end_col_offset:]  # the comment after the value
            lines[node.lineno - 1: node.end_lineno] = [f"{name} = {_literal(todo.pop(name))}{rest}"]
    lines += [f"{k} = {_literal(v)}" for k, v in todo.items()]
    target["source"] = "\n".join(lines)
    for i in reversed(injected):
        del cells[i]


def clean_notebook(nb: dict[str, Any], chapter: str, profile: str, parameters: Mapping[str, Any],
                   digest: str, reads: Sequence[str] = (), provenance_line: str | None = None) -> dict[str, Any]:
    """Strip what varies between runs; add what the driver needs to skip re-execution, and
    the provenance line as the page's last cell."""
    merge_parameters(nb, parameters)
    if provenance_line:
        nb.setdefault("cells", []).append({"cell_type": "markdown", "metadata": {}, "source": provenance_line})
    for i, cell in enumerate(nb.get("cells", [])):
        cell["id"] = cell_id(chapter, i)
        meta = cell.get("metadata", {})
        cell["metadata"] = {k: meta[k] for k in CELL_METADATA_KEEP if meta.get(k)}
        for out in cell.get("outputs", []):
            out.get("metadata", {}).pop("execution", None)
    meta = nb.get("metadata", {})
    kernelspec = meta.get("kernelspec") or {"display_name": "Python 3", "language": "python", "name": KERNEL}
    language = {"name": meta.get("language_info", {}).get("name", "python")}
    nb["metadata"] = {
        "kernelspec": kernelspec,
        "language_info": language,
        "moecalc": {
            "chapter": chapter,
            "profile": profile,
            "parameters": dict(parameters),
            "inputs": digest,
            "reads": list(reads),
            "tables": table_links(nb),
        },
    }
    nb["nbformat"], nb["nbformat_minor"] = 4, 5
    return nb


def dumps(nb: Mapping[str, Any]) -> str:
    """nbformat's own serialisation (sorted keys, indent 1) with a final newline."""
    import nbformat

    text = nbformat.writes(nbformat.from_dict(nb))
    return text if text.endswith("\n") else text + "\n"


def write_if_changed(path: Path, text: str) -> bool:
    """Write `text` to `path` unless it already holds exactly that; True if written."""
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return True


def stderr_outputs(nb: Mapping[str, Any]) -> list[str]:
    """Text a notebook wrote to stderr (warnings): a page must print none."""
    found = []
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                text = out.get("text", "")
                found.append("".join(text) if isinstance(text, list) else text)
    return found


# ---------------------------------------------------------------- execution


@dataclass
class Result:
    job: Job
    seconds: float
    written: bool = False
    error: str | None = None


def pop_reads(nb: dict[str, Any]) -> list[str]:
    """Remove the driver's READS_CELL (the last cell) and return the paths it printed."""
    cell = nb["cells"].pop()
    if cell.get("source") != READS_CELL:
        raise InputError("the last cell of an executed page is not the driver's reads cell")
    text = "".join("".join(o.get("text", "")) for o in cell.get("outputs", []) if o.get("output_type") == "stream")
    return json.loads(text)


def execute(job: Job, common: str, failed_dir: Path, root: Path = ROOT) -> Result:
    """Run one job with papermill and write its cleaned notebook. Runs in a worker process."""
    import jupytext
    import nbformat
    import papermill
    from papermill.exceptions import PapermillExecutionError

    start = time.perf_counter()
    job.output.parent.mkdir(parents=True, exist_ok=True)
    os.environ["MOECALC_BOOK_WRITE"] = "1"  # lets moecalc.pages write the CSV tables
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    os.environ["MPLBACKEND"] = "agg"
    source = jupytext.read(job.chapter.path)
    if job.chapter.per == "hardware":  # "H20 · Decode": the title says which GPU the page is about
        name = read_profile(root / "params", job.profile).get("name") or job.profile
        retitle(source, name)
    elif job.chapter.per == "model":  # "DeepSeek-V3 · Model anatomy": one page per model, told apart in the sidebar
        stem = job.parameters["model"]
        retitle(source, read_profile(root / "params", stem, "model").get("name") or stem)
    source.cells.append(nbformat.v4.new_code_cell(READS_CELL))
    scratch = failed_dir / job.profile / job.output.name  # papermill's own copy: kept only if the run fails
    scratch.parent.mkdir(parents=True, exist_ok=True)
    try:
        nb = papermill.execute_notebook(
            source,
            str(scratch),
            parameters=dict(job.parameters),
            kernel_name=KERNEL,
            cwd=str(job.output.parent),
            progress_bar=False,
            log_output=False,
        )
    except PapermillExecutionError as exc:
        return Result(job, time.perf_counter() - start,
                      error=f"{exc.ename}: {exc.evalue} (cell {exc.exec_count}; see {scratch})")
    except Exception as exc:  # kernel died, bad parameters, ...
        return Result(job, time.perf_counter() - start, error=f"{type(exc).__name__}: {exc} (see {scratch})")
    nb = dict(nb)
    reads = relative_reads(pop_reads(nb), root)
    digest = job_digest(job, common, reads, root)
    nb = clean_notebook(nb, job.name, job.profile, job.parameters, digest, reads,
                        provenance(job.chapter.path, reads, root))
    text = dumps(nb)
    warnings = stderr_outputs(nb)
    if warnings:
        write_if_changed(scratch, text)
        return Result(job, time.perf_counter() - start,
                      error=f"wrote to stderr (see {scratch}): {warnings[0].strip().splitlines()[-1][:200]}")
    scratch.unlink(missing_ok=True)
    written = write_if_changed(job.output, text)
    return Result(job, time.perf_counter() - start, written=written)


def _worker_init(log_path: str) -> None:
    """Send the kernels' own chatter (ipykernel's transport warnings, shutdown notices) to a
    log file instead of the terminal: a worker's fd 2 is inherited by the kernels it starts."""
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 2)
    os.close(fd)


def _execute_star(args):
    return execute(*args)


def run_jobs(jobs: Sequence[Job], common: str, workers: int, failed_dir: Path, root: Path = ROOT,
             log=print) -> list[Result]:
    """Execute `jobs`, `workers` at a time."""
    if not jobs:
        return []
    results = []
    args = [(job, common, failed_dir, root) for job in jobs]
    import multiprocessing

    kernel_log = failed_dir.parent / "kernels.log"
    kernel_log.parent.mkdir(parents=True, exist_ok=True)
    kernel_log.write_text("", encoding="utf-8")  # this run's chatter only
    kernel_log = str(kernel_log)
    with ProcessPoolExecutor(max_workers=max(1, min(workers, len(args))), initializer=_worker_init,
                             initargs=(kernel_log,), mp_context=multiprocessing.get_context("spawn")) as pool:
        for result in pool.map(_execute_star, args):
            results.append(result)
            _log_result(result, log)
    return results


def _log_result(r: Result, log) -> None:
    state = "FAILED" if r.error else ("written" if r.written else "unchanged")
    log(f"  {r.seconds:5.1f} s  {r.job.docname}.ipynb  {state}" + (f"\n      {r.error}" if r.error else ""))


# ---------------------------------------------------------------- prune


def prune(jobs: Sequence[Job], book_dir: Path = BOOK_DIR, log=print) -> list[Path]:
    """Delete executed notebooks, CSV tables and folders that no job produces any more."""
    executed = book_dir / EXECUTED
    keep_nb = {j.output.resolve() for j in jobs}
    keep_csv = set()
    for j in jobs:
        meta = stored_meta(j.output) or {}
        keep_csv.update((j.output.parent / t).resolve() for t in meta.get("tables", []))
    removed = []
    if not executed.is_dir():
        return removed
    for path in sorted(executed.rglob("*")):
        if not path.is_file():
            continue
        if path.suffix == ".ipynb" and path.resolve() not in keep_nb:
            removed.append(path)
        elif path.suffix == ".csv" and path.resolve() not in keep_csv:
            removed.append(path)
        elif path.name.endswith(".tmp"):
            removed.append(path)
    for path in removed:
        path.unlink()
        log(f"  removed {path.relative_to(book_dir)}")
    for d in sorted((p for p in executed.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(d.iterdir()):
            d.rmdir()
    return removed


# ---------------------------------------------------------------- table of contents


def hardware_title(params_dir: Path, stem: str) -> str:
    """``"H800 SXM5 (h800.yaml)"``: the profile's name and its file."""
    name = read_profile(params_dir, stem).get("name")
    return f"{name} ({stem}.yaml)" if name else f"{stem}.yaml"


def toc(jobs: Sequence[Job], params_dir: Path, book_dir: Path = BOOK_DIR, root: str = "intro") -> dict[str, Any]:
    """The Jupyter Book table of contents (``jb-book`` format) for `jobs`.

    Parts follow the chapters' order: a once-chapter sits in its ``part`` (consecutive
    once-chapters with the same part share it); the per-hardware chapters form one part
    per profile, placed where the first per-hardware chapter is."""
    parts: list[dict[str, Any]] = []
    profiles = sorted({j.profile for j in jobs if j.chapter.per == "hardware"})
    hw_done = False

    def entry(job: Job) -> dict[str, Any]:
        e: dict[str, Any] = {"file": job.docname}
        kids = [c for c in job.chapter.children if (book_dir / f"{c}.md").is_file() or (book_dir / f"{c}.ipynb").is_file()]
        if kids:
            e["sections"] = [{"file": c} for c in kids]
        return e

    chapters = []
    for j in jobs:
        if j.chapter not in chapters:
            chapters.append(j.chapter)
    for ch in chapters:
        if ch.per == "hardware":
            if hw_done:
                continue
            hw_done = True
            hw_chapters = [c for c in chapters if c.per == "hardware"]
            for p in profiles:
                entries = [entry(j) for c in hw_chapters for j in jobs if j.chapter == c and j.profile == p]
                # one entry per GPU with its other pages beneath: the sidebar shows them only for the
                # GPU being read (show_navbar_depth 1), not 5 × every profile
                head, rest = entries[0], entries[1:]
                if rest:
                    head = {**head, "sections": [*head.get("sections", []), *rest]}
                parts.append({"caption": hardware_title(params_dir, p), "chapters": [head]})
            continue
        caption = ch.part or ch.name
        entries = [entry(j) for j in jobs if j.chapter == ch]
        if parts and parts[-1].get("_once") == caption:
            parts[-1]["chapters"].extend(entries)
        else:
            parts.append({"caption": caption, "chapters": entries, "_once": caption})
    for p in parts:
        p.pop("_once", None)
    return {"format": "jb-book", "root": root, "parts": parts}


def toc_yaml(data: Mapping[str, Any]) -> str:
    import yaml

    return "# Generated by moecalc.book: do not edit.\n" + yaml.safe_dump(dict(data), sort_keys=False, allow_unicode=True)


# ---------------------------------------------------------------- HTML


def prune_html(jobs: Sequence[Job], html_dir: Path) -> list[Path]:
    """Delete built pages of notebooks that are gone (Sphinx never deletes an output)."""
    keep = {j.docname for j in jobs}
    removed = []
    for sub, suffix in ((html_dir / EXECUTED, ".html"), (html_dir / "_sources" / EXECUTED, ".ipynb")):
        if not sub.is_dir():
            continue
        for path in sorted(sub.rglob(f"*{suffix}")):
            doc = path.relative_to(sub.parent).as_posix()[: -len(suffix)]
            if doc not in keep:
                path.unlink()
                removed.append(path)
        for d in sorted((p for p in sub.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            if not any(d.iterdir()):
                d.rmdir()
    return removed


def build_html(book_dir: Path, toc_path: Path, strict: bool = True, jobs: int = 1, out_dir: Path | None = None) -> int:
    """Jupyter Book → ``book/_build/html`` (or `out_dir`). Returns the number of Sphinx warnings."""
    import io

    from jupyter_book.sphinx import build_sphinx

    class Tee(io.TextIOBase):
        def __init__(self, stream):
            self.stream, self.lines = stream, []

        def write(self, s):
            self.lines.append(s)
            return self.stream.write(s)

        def flush(self):
            self.stream.flush()

    tee = Tee(sys.stderr)
    old = sys.stderr
    sys.stderr = tee
    try:
        result = build_sphinx(
            book_dir,
            out_dir or book_dir / BUILD / "html",
            use_external_toc=True,
            noconfig=True,
            path_config=str(book_dir / "_config.yml"),
            confoverrides={"external_toc_path": toc_path.as_posix(), "latex_individualpages": False},
            builder="html",
            warningiserror=strict,
            keep_going=strict,
            quiet=True,
            jobs=jobs,
        )
    finally:
        sys.stderr = old
    warnings = sum(s.count("WARNING:") for s in tee.lines)
    if isinstance(result, Exception):
        raise InputError(f"the HTML build failed: {result}")
    if result:
        raise InputError(f"the HTML build failed with {warnings} warning(s) (see above)")
    return warnings


# ---------------------------------------------------------------- rendered-HTML check

# Text that must never reach a reader: MyST a parser left unparsed (Sphinx -W and nbval pass it).
RAW_MYST = ("```{", ":::{", "{download}`", "{numref}`", "{glue:", ":name:", ":align:")
# Widest display-equation line, in characters of rendered TeX (subscripts count 0.7): about the
# content column of a 1400-px window (the article is ~72 rem; MathJax sets ~11 px per character).
MAX_EQUATION_CHARS = 85


def equation_width(tex: str) -> float:
    """A rendered display line's width in characters, estimated from its TeX: commands that
    draw nothing or one glyph shrink, a fraction is as wide as its wider part, text in
    sub/superscripts counts 0.7."""
    t = re.sub(r"\\(left|right|[Bb]igg?|displaystyle|,|;|!|quad|qquad)\b|\\[,;!]", lambda mm: {"quad": "  ", "qquad": "    "}.get(mm.group(1) or "", ""), tex)
    t = re.sub(r"\\(text|mathrm|operatorname|mathbf|mathit)\{([^{}]*)\}", r"\2", t)
    for _ in range(3):  # nested fractions, innermost first
        t = re.sub(r"\\frac\{([^{}]*)\}\{([^{}]*)\}", lambda mm: max(mm.group(1), mm.group(2), key=len), t)
    t = re.sub(r"\\[A-Za-z]+", "x", t)  # any other command: one glyph
    small = sum(len(g) for g in re.findall(r"[_^]\{([^{}]*)\}", t)) + len(re.findall(r"[_^][^{]", t))
    t = re.sub(r"[{}_^&]", "", t)
    return len(re.sub(r"\s+", " ", t).strip()) - 0.3 * small


class _PageScan:
    """Reads one built page: the text outside the notebook's own code cells, its tables and
    whether each has a number, and its display equations."""

    def __init__(self, text: str):
        from html.parser import HTMLParser

        scan = self
        self.text: list[str] = []
        self.tables: list[tuple[str, bool]] = []  # (id or first cell text, numbered)
        self.math: list[str] = []

        class P(HTMLParser):
            def __init__(self):
                super().__init__(convert_charrefs=True)
                self.stack: list[tuple[str, bool, bool]] = []  # (tag, skips, is math)
                self.table: list | None = None

            def skipping(self):
                return any(sk for _, sk, _ in self.stack)

            def handle_starttag(self, tag, attrs):
                a = dict(attrs)
                cls = (a.get("class") or "").split()
                if tag in ("br", "img", "hr", "meta", "link", "input", "col", "source", "wbr"):
                    return
                self.stack.append((tag, "cell_input" in cls, tag == "div" and "math" in cls))
                if tag == "table" and not self.skipping():
                    self.table = [a.get("id") or "", False]
                if tag == "span" and "caption-number" in cls and self.table is not None:
                    self.table[1] = True

            def handle_endtag(self, tag):
                while self.stack:
                    t, _, _ = self.stack.pop()
                    if t == tag:
                        break
                if tag == "table" and self.table is not None:
                    scan.tables.append((self.table[0], self.table[1]))
                    self.table = None

            def handle_data(self, data):
                if self.skipping():
                    return
                scan.text.append(data)
                if self.table is not None and not self.table[0] and data.strip():
                    self.table[0] = data.strip()[:40]
                if any(m for _, _, m in self.stack):
                    scan.math.append(data)

        P().feed(text)


def html_defects(text: str, numbered_tables: bool = True) -> list[str]:
    """What a reader would see wrong on one built page: raw MyST or role syntax (outside the
    notebook's own code cells), a table without a number, a display equation wider than the
    content column."""
    scan = _PageScan(text)
    body = "".join(scan.text)
    found = [f"raw MyST {pat!r}: ...{body[max(0, i - 60):i + 60]!r}..." for pat in RAW_MYST
             for i in [body.find(pat)] if i >= 0]
    if numbered_tables:
        found += [f"table without a number: {name!r}" for name, numbered in scan.tables if not numbered]
    for block in scan.math:
        tex = block.strip().removeprefix("\\[").removesuffix("\\]")
        for line in re.split(r"\\\\", tex):
            width = equation_width(line)
            if width > MAX_EQUATION_CHARS:
                found.append(f"equation line of ~{width:.0f} characters (at most {MAX_EQUATION_CHARS}): {line.strip()[:80]!r}")
    return found


def check_html(html_dir: Path, docnames: Iterable[str], unnumbered_ok: Iterable[str] = ()) -> dict[str, list[str]]:
    """`html_defects` of each built page (docname without ``.html``); pages with none omitted."""
    ok = set(unnumbered_ok)
    out = {}
    for doc in docnames:
        path = html_dir / f"{doc}.html"
        found = html_defects(path.read_text(encoding="utf-8"), numbered_tables=doc not in ok) if path.is_file() \
            else [f"{path} was not built"]
        if found:
            out[doc] = found
    return out


# ---------------------------------------------------------------- main


@dataclass
class Summary:
    executed: list[Result] = field(default_factory=list)
    skipped: int = 0
    removed: int = 0
    warnings: int = 0
    seconds: float = 0.0


class _Lock:
    """An exclusive lock on ``book/_build/book.lock`` for the whole build: two builds in one
    working tree would prune each other's fresh outputs. A second build waits for the first."""

    def __init__(self, path: Path, log=print):
        self.path, self.log, self.fd = path, log, None

    def __enter__(self):
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.log(f"moecalc book: another build holds {self.path}; waiting for it")
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        import fcntl

        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def build(
    force: bool = False,
    workers: int | None = None,
    html: bool = True,
    strict: bool = True,
    only: Sequence[str] = (),
    book_dir: Path = BOOK_DIR,
    params_dir: Path | None = None,
    root: Path = ROOT,
    log=print,
) -> Summary:
    """Execute what is stale, prune, generate the TOC, build HTML. Raises InputError if a
    notebook fails or (with `strict`) Sphinx warns."""
    with _Lock(book_dir / BUILD / "book.lock", log):
        return _build(force, workers, html, strict, only, book_dir, params_dir, root, log)


def selected(job: Job, only: Sequence[str]) -> bool:
    """True when `only` is empty or one of its shell patterns matches the job's
    ``<profile>/<chapter>`` (``h800/decode``, ``*/serving``, ``common/*``)."""
    import fnmatch

    return not only or any(fnmatch.fnmatchcase(f"{job.profile}/{name}", pattern) for pattern in only
                           for name in {job.chapter.name, job.name})


def _build(force, workers, html, strict, only, book_dir, params_dir, root, log) -> Summary:
    from .profiles import PARAMS_DIR

    start = time.perf_counter()
    params_dir = params_dir or PARAMS_DIR
    workers = workers or min(2, os.cpu_count() or 1)
    chapters = discover_chapters(book_dir)
    if not chapters:
        raise InputError(f"no chapters (front matter 'moecalc:') in {book_dir / CHAPTERS}")
    profiles = hardware_profiles(params_dir)
    jobs = plan(chapters, profiles, book_dir, params_dir)
    common = common_digest(root)
    todo, summary = [], Summary()
    for job in jobs:
        if not selected(job, only):
            summary.skipped += 1
        elif force or not is_current(job, common, root):
            todo.append(job)
        else:
            summary.skipped += 1
    n_hw = sum(c.per == "hardware" for c in chapters)
    log(f"moecalc book: {len(jobs)} pages ({n_hw} per-hardware chapters on {len(profiles)} hardware profiles, "
        f"{len(chapters) - n_hw} once-chapters), {len(todo)} to execute, {summary.skipped} up to date")
    failed_dir = book_dir / BUILD / "failed"
    summary.executed = run_jobs(todo, common, workers, failed_dir, root, log)
    errors = [r for r in summary.executed if r.error]
    if errors:
        raise InputError(f"{len(errors)} page(s) failed: " + "; ".join(f"{r.job.docname}: {r.error}" for r in errors))
    summary.removed = len(prune(jobs, book_dir, log))
    toc_path = book_dir / BUILD / "_toc.yml"
    write_if_changed(toc_path, toc_yaml(toc(jobs, params_dir, book_dir)))
    if html:
        t = time.perf_counter()
        log("moecalc book: building HTML")
        summary.warnings = build_html(book_dir, toc_path, strict=strict, jobs=1)
        prune_html(jobs, book_dir / BUILD / "html")
        log(f"moecalc book: HTML in {time.perf_counter() - t:.1f} s, {summary.warnings} warning(s): "
            f"{book_dir / BUILD / 'html' / 'index.html'}")
    summary.seconds = time.perf_counter() - start
    ran = sum(r.seconds for r in summary.executed)
    log(f"moecalc book: done in {summary.seconds:.1f} s ({len(summary.executed)} executed, {ran:.1f} s of kernel "
        f"time; {summary.skipped} skipped; {summary.removed} stale files removed)")
    return summary
