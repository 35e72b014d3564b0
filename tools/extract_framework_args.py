"""Extract a serving framework's command-line flags from its own source, as data.

    pip download sglang==0.5.3 --no-deps -d /tmp/wheels
    pip download vllm==0.11.0 --no-deps -d /tmp/wheels
    python tools/extract_framework_args.py sglang /tmp/wheels/sglang-0.5.3-py3-none-any.whl 0.5.3
    python tools/extract_framework_args.py vllm /tmp/wheels/vllm-0.11.0-cp38-abi3-manylinux1_x86_64.whl 0.11.0

writes params/framework/launch/<framework>-<version>-args.yaml: every flag (and alias) its argument parser
defines, with the value kind moecalc checks (flag = no value, int, float, str, or a list
of them), the choices where the source lists them literally, and the source file. Reads
the wheel's Python source with `ast` (nothing is imported or executed).

SGLang: ``ServerArgs.add_cli_args`` in sglang/srt/server_args.py (``type=``, ``action=``,
``nargs=``, ``choices=`` of each ``parser.add_argument``). vLLM: ``EngineArgs.add_cli_args``
in vllm/engine/arg_utils.py, whose flags mostly take ``**<config>_kwargs["field"]``: the
kind then comes from the field's annotation in ``class EngineArgs``, booleans being
``argparse.BooleanOptionalAction`` (``--x`` and ``--no-x``); plus ``FrontendArgs`` of
vllm/entrypoints/openai/cli_args.py (``vllm serve``'s own flags, same rule).
"""

from __future__ import annotations

import ast
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _literal(node):
    try:
        return ast.literal_eval(node)
    except (ValueError, SyntaxError, TypeError):
        return None


def _module_lists(tree: ast.Module) -> dict[str, list]:
    """Module-level NAME = [literal, ...] (choices lists defined once, referenced by name)."""
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            value = _literal(node.value)
            if isinstance(value, list):
                out[node.targets[0].id] = value
    return out


def _kind_of_type(node) -> str | None:
    if isinstance(node, ast.Name) and node.id in ("int", "float", "str"):
        return node.id
    if isinstance(node, ast.Attribute):  # e.g. json.loads, a custom parser
        return "str"
    if isinstance(node, ast.Name):
        return "str"
    return None


def _kind_of_annotation(text: str) -> str:
    t = text.replace("Optional[", "").replace("typing.", "")
    if t.startswith("bool"):
        return "flag"
    if t.startswith(("list[int]", "List[int]")):
        return "int+"
    if t.startswith(("list[str]", "List[str]")):
        return "str+"
    if t.startswith("int"):
        return "int"
    if t.startswith("float"):
        return "float"
    return "str"


def _add_argument_calls(tree: ast.AST):
    """Every ``….add_argument("--flag", …)`` call: (the call, its option names, its keywords)."""
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument"):
            continue
        names = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        if names and names[0].startswith("-"):
            yield node, names, {k.arg: k.value for k in node.keywords if k.arg}


def sglang_flags(source: str) -> dict[str, dict]:
    tree = ast.parse(source)
    lists = _module_lists(tree)
    flags: dict[str, dict] = {}
    for node, names, kw in _add_argument_calls(tree):
        action = _literal(kw["action"]) if "action" in kw else None
        action_name = ast.unparse(kw["action"]) if "action" in kw else ""
        if action in ("store_true", "store_false") or action_name == "DeprecatedStoreTrueAction":
            kind = "flag"
        else:
            kind = _kind_of_type(kw.get("type")) or "str"
            if "nargs" in kw and _literal(kw["nargs"]) in ("+", "*"):
                kind += "+"
        entry: dict = {"kind": kind}
        if action_name.startswith("Deprecated"):
            entry["deprecated"] = True
        if "choices" in kw:
            choices = _literal(kw["choices"])
            if choices is None and isinstance(kw["choices"], ast.Name):
                choices = lists.get(kw["choices"].id)
            if isinstance(choices, list) and all(isinstance(c, (str, int)) for c in choices):
                entry["choices"] = choices
        for name in names:
            flags[name] = dict(entry, **({"alias_of": names[0]} if name != names[0] else {}))
    return flags


def sglang_field_flags(sources: list[str]) -> dict[str, dict]:
    """SGLang ≥ 0.5.2x: flags are ``name: A[type, "help" | Arg(...)]`` fields of the
    sglang/srt/arg_groups/fields/*.py structs, registered by arg_utils.add_cli_args_from_dataclass
    (no_cli fields skipped; cli_name or --name-with-dashes, plus aliases; bool → store_true;
    List[X] → X+; Literal[...] → choices; Optional unwrapped)."""
    flags: dict[str, dict] = {}
    for source in sources:
        tree = ast.parse(source)
        lists = _module_lists(tree)
        for node in ast.walk(tree):
            if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
                continue
            ann = node.annotation
            if not (isinstance(ann, ast.Subscript) and getattr(ann.value, "id", None) == "A"):
                continue
            parts = ann.slice.elts if isinstance(ann.slice, ast.Tuple) else [ann.slice]
            if len(parts) < 2:
                continue
            meta = parts[1]
            kw = {}
            if isinstance(meta, ast.Call) and getattr(meta.func, "id", None) == "Arg":
                kw = {k.arg: k.value for k in meta.keywords if k.arg}
            elif not (isinstance(meta, ast.Constant) and isinstance(meta.value, str)):
                continue
            if kw.get("no_cli") is not None and _literal(kw["no_cli"]) is True:
                continue
            name = _literal(kw["cli_name"]) if "cli_name" in kw else "--" + node.target.id.replace("_", "-")
            aliases = _literal(kw["aliases"]) if "aliases" in kw else []
            t = ast.unparse(parts[0]).replace("typing.", "")
            inner = t[len("Optional["):-1] if t.startswith("Optional[") else t
            entry: dict = {}
            if "action" in kw:
                entry["kind"] = "flag" if "store" in ast.unparse(kw["action"]) else "str"
            elif inner.startswith("Literal["):
                entry["kind"] = "str"
                entry["choices"] = _literal(ast.parse(inner, mode="eval").body.slice) or None
            elif inner.startswith(("List[", "list[")) and "type_parser" not in kw:
                entry["kind"] = _kind_of_annotation(inner).rstrip("+") + "+" if inner[5:].startswith(("int", "float", "str")) else "str+"
            elif inner == "bool":
                entry["kind"] = "flag"
            else:
                entry["kind"] = {"int": "int", "float": "float"}.get(inner, "str")
            if "choices" in kw:
                choices = _literal(kw["choices"])
                if choices is None and isinstance(kw["choices"], ast.Name):
                    choices = lists.get(kw["choices"].id)
                if isinstance(choices, list):
                    entry["choices"] = choices
            if entry.get("choices") is None:
                entry.pop("choices", None)
            for n in [name, *(aliases or [])]:
                flags[n] = dict(entry, **({"alias_of": name} if n != name else {}))
    return flags


def _class_annotations(tree: ast.Module, cls: str) -> dict[str, str]:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            return {s.target.id: ast.unparse(s.annotation) for s in node.body
                    if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)}
    return {}


def vllm_flags(engine_source: str, frontend_source: str) -> dict[str, dict]:
    flags: dict[str, dict] = {}
    # make_arg_parser's own flags (--headless, --api-server-count, --config), SGLang's rule
    flags.update(sglang_flags(frontend_source))
    tree = ast.parse(engine_source)
    fields = _class_annotations(tree, "EngineArgs")
    for node, names, kw in _add_argument_calls(tree):
        kind = None
        if "type" in kw:
            kind = _kind_of_type(kw["type"])
        elif "action" in kw and _literal(kw["action"]) in ("store_true", "store_false"):
            kind = "flag"
        star = [k.value for k in node.keywords if k.arg is None]
        field = None
        if star and isinstance(star[0], ast.Subscript):
            field = _literal(star[0].slice)
        if kind is None:
            kind = _kind_of_annotation(fields.get(field or names[0].lstrip("-").replace("-", "_"), "str"))
        for name in names:
            flags[name] = {"kind": kind, **({"alias_of": names[0]} if name != names[0] else {})}
            if kind == "flag" and field is not None and name.startswith("--"):  # BooleanOptionalAction
                flags["--no-" + name[2:]] = {"kind": "flag", "negates": name}
    front = _class_annotations(ast.parse(frontend_source), "FrontendArgs")
    for field, annotation in front.items():
        name = "--" + field.replace("_", "-")
        kind = _kind_of_annotation(annotation)
        flags.setdefault(name, {"kind": kind})
        if kind == "flag":
            flags.setdefault("--no-" + name[2:], {"kind": "flag", "negates": name})
    return flags


def main(framework: str, wheel: str, version: str) -> None:
    import yaml

    with zipfile.ZipFile(wheel) as z:
        fields = sorted(n for n in z.namelist() if n.startswith("sglang/srt/arg_groups/fields/") and n.endswith(".py"))
        if framework == "sglang" and fields:
            flags = sglang_field_flags([z.read(n).decode() for n in fields])
            # plus what server_args.py still registers by hand (deprecated spellings among them)
            flags.update(sglang_flags(z.read("sglang/srt/server_args.py").decode()))
            sources = [f"sglang/srt/arg_groups/fields/*.py (A[type, Arg(...)] fields, registered by "
                       f"arg_groups/arg_utils.py add_cli_args_from_dataclass) in {Path(wheel).name}",
                       "sglang/srt/server_args.py (flags registered by hand, incl. deprecated ones)"]
        elif framework == "sglang":
            path = "sglang/srt/server_args.py"
            flags = sglang_flags(z.read(path).decode())
            sources = [f"{path} (ServerArgs.add_cli_args) in {Path(wheel).name}"]
        elif framework == "vllm":
            paths = ("vllm/engine/arg_utils.py", "vllm/entrypoints/openai/cli_args.py")
            flags = vllm_flags(*(z.read(p).decode() for p in paths))
            sources = [f"{paths[0]} (EngineArgs.add_cli_args, kinds from class EngineArgs) in {Path(wheel).name}",
                       f"{paths[1]} (FrontendArgs and make_arg_parser: vllm serve's own flags)"]
        else:
            raise SystemExit(f"unknown framework {framework!r}")
    data = {"framework": framework, "version": version, "sources": sources,
            "generated_by": "tools/extract_framework_args.py (ast over the wheel's source; nothing imported)",
            "flags": dict(sorted(flags.items()))}
    out = ROOT / "params" / "framework" / "launch" / (f"{framework}-{version}-args.yaml" if len(sys.argv) < 5
                                                      else sys.argv[4])
    out.parent.mkdir(parents=True, exist_ok=True)
    class NoAliases(yaml.SafeDumper):
        def ignore_aliases(self, data):
            return True

    out.write_text(f"# {framework} {version}: every command-line flag its own parser defines. Generated; do not edit.\n"
                   + yaml.dump(data, Dumper=NoAliases, sort_keys=False, allow_unicode=True, width=120), encoding="utf-8")
    print(f"{out}: {len(flags)} flags")


if __name__ == "__main__":
    main(*sys.argv[1:4])  # an optional 4th argument names the output file (e.g. another version's)
