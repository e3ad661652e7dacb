"""MBPP items rewritten into HumanEval's prompt shape, so a model trained on them practises the task it is
scored on: continue `def <name>(<args>):` + docstring with the function body.

MBPP gives a task sentence, three asserts and a whole reference program; HumanEval gives imports, a
signature and a docstring (task + examples) and scores the body the model writes. The conversion:

- entry point = the first function the asserts call (outermost call first) that the reference program
  defines at top level;
- prompt = the program's code before that function, verbatim (imports, helpers), then helper definitions
  (def/class/import) that came after it, then `def <name>(<args>) -> <ret>:` rebuilt with `ast.unparse`,
  then a docstring holding the task sentence and the asserts;
- target = the reference body, leading tabs expanded and re-indented to 4 spaces (HumanEval's canonical
  solutions are 4-space bodies; lines inside multi-line strings stay verbatim), ending in a newline.

Every item either converts or is skipped with a reason (`Skip`); a converted item's prompt + target is
checked to parse back to the reference function's exact syntax tree, so the target is the reference code.
"""

from __future__ import annotations

import ast
import io
import textwrap
import tokenize
from dataclasses import replace

from .records import Record

SHAPE = "humaneval"
_STRING_TOKENS = {tokenize.STRING} | ({tokenize.FSTRING_MIDDLE} if hasattr(tokenize, "FSTRING_MIDDLE") else set())
_MOVABLE = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom)


class Skip(Exception):
    """An MBPP item that has no faithful HumanEval-shaped form; str(exc) says why."""


def _called_names(tests: list[str]) -> list[str]:
    """Names of plain function calls in the asserts, outermost first, each once."""
    names: list[str] = []
    for line in tests:
        try:
            tree = ast.parse(line)
        except SyntaxError:
            raise Skip(f"a test line does not parse: {line!r}") from None
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id not in names:
                names.append(node.func.id)
    return names


def _entry_function(tree: ast.Module, tests: list[str]) -> ast.FunctionDef:
    defined = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    for name in _called_names(tests):
        if name in defined:
            return defined[name]
    raise Skip("the asserts call no function that the reference code defines at top level")


def _lines(code: str, first: int, last: int) -> str:
    """Source lines first..last (1-based, inclusive), verbatim."""
    return "".join(code.splitlines(keepends=True)[first - 1:last])


def _expand_leading_tabs(line: str) -> str:
    stripped = line.lstrip(" \t")
    return line[: len(line) - len(stripped)].expandtabs(8) + stripped


def _inside_strings(code: str) -> set[int]:
    """1-based numbers of lines that continue a multi-line string: their leading spaces are string content."""
    rows: set[int] = set()
    tokens = tokenize.generate_tokens(io.StringIO(code).readline)
    for tok in tokens:
        if tok.type in _STRING_TOKENS and tok.end[0] > tok.start[0]:
            rows.update(range(tok.start[0] + 1, tok.end[0] + 1))
    return rows


def _body(code: str, fn: ast.FunctionDef) -> str:
    first = fn.body[0]
    if first.lineno == fn.lineno:  # one-liner `def f(x): return x`
        segment = ast.get_source_segment(code, fn, padded=False) or ""
        text = code.splitlines()[first.lineno - 1][first.col_offset:] if "\n" not in segment else None
        if text is None:
            raise Skip("the body starts on the def line and spans several lines")
        return "    " + text.strip() + "\n"
    verbatim = _inside_strings(code)
    numbered = list(enumerate(_lines(code, first.lineno, fn.end_lineno).splitlines(), start=first.lineno))
    code_lines = [_expand_leading_tabs(l) for n, l in numbered
                  if n not in verbatim and l.strip() and not l.lstrip().startswith("#")]
    margin = min(len(l) - len(l.lstrip()) for l in code_lines)
    out = []
    for n, line in numbered:
        if n in verbatim:
            out.append(line)
        elif not line.strip():
            out.append("")
        else:
            line = _expand_leading_tabs(line)
            out.append("    " + line[min(margin, len(line) - len(line.lstrip())):])
    while out and not out[-1].strip():
        out.pop()
    return "\n".join(out) + "\n"


def _docstring(text: str, tests: list[str]) -> str:
    inner = "\n".join([text.strip(), ""] + [t.strip() for t in tests])
    if '"""' in inner:
        raise Skip('the task text or an assert contains """, which cannot sit in a """ docstring')
    prefix = "r" if "\\" in inner else ""  # keep backslashes in the asserts literal
    return f'    {prefix}"""{textwrap.indent(inner, "    ")[4:]}\n    """\n'


def convert(record: Record) -> Record:
    """The HumanEval-shaped copy of an MBPP Record (question = prompt, target = body); raises Skip."""
    code = record.target
    tests = list(record.meta.get("test_list") or [])
    if not tests:
        raise Skip("no asserts to show as examples")
    if str(record.meta.get("test_setup_code") or "").strip():
        raise Skip("the asserts need test_setup_code (objects the examples cannot show)")
    try:
        tree = ast.parse(code)
    except SyntaxError as exc:
        raise Skip(f"the reference code does not parse ({exc.msg})") from None
    fn = _entry_function(tree, tests)
    if fn.decorator_list:
        raise Skip("the entry function is decorated")
    index = tree.body.index(fn)
    after = tree.body[index + 1:]
    if any(not isinstance(n, _MOVABLE) for n in after):
        raise Skip("module-level statements follow the entry function (they cannot move before it)")
    before = _lines(code, 1, fn.lineno - 1).rstrip()
    helpers = [_lines(code, n.lineno if not getattr(n, "decorator_list", None) else n.decorator_list[0].lineno,
                      n.end_lineno).rstrip() for n in after]
    preamble = "\n".join(p for p in [before, *helpers] if p.strip())
    returns = f" -> {ast.unparse(fn.returns)}" if fn.returns is not None else ""
    signature = f"def {fn.name}({ast.unparse(fn.args)}){returns}:\n"
    prompt = (preamble + "\n\n\n" if preamble else "") + signature + _docstring(record.question, tests)
    body = _body(code, fn)
    _check_same_function(prompt + body, fn)
    meta = dict(record.meta, shape=SHAPE, entry_point=fn.name, reference_code=code)
    return replace(record, question=prompt, target=body, meta=meta)


def _check_same_function(program: str, fn: ast.FunctionDef) -> None:
    """prompt + target must define the reference function with the very same body (docstring aside)."""
    try:
        tree = ast.parse(program)
    except SyntaxError as exc:
        raise Skip(f"the rewritten program does not parse ({exc.msg} at line {exc.lineno})") from None
    new = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == fn.name]
    if len(new) != 1:
        raise Skip(f"the rewritten program defines {fn.name} {len(new)} times")
    body = new[0].body[1:]  # the docstring we added
    if ast.dump(ast.Module(body=body, type_ignores=[])) != ast.dump(ast.Module(body=fn.body, type_ignores=[])) \
            or ast.dump(new[0].args) != ast.dump(fn.args):
        raise Skip("re-indenting changed the function's syntax tree")


def convert_all(records: list[Record]) -> tuple[list[Record], list[tuple[str, str]]]:
    """(converted records, [(id, reason) of each skipped item]) in file order."""
    out, skipped = [], []
    for r in records:
        try:
            out.append(convert(r))
        except Skip as exc:
            skipped.append((r.id, str(exc)))
    return out, skipped
