"""What Ollama sends the model for a conversation, from a Modelfile: a Go text/template subset, in Python, for tests.

Supports what a Modelfile's chat template needs: literal text, `{{ .Field }}`, `{{ if PIPE }}`,
`{{ else if PIPE }}`, `{{ else }}`, `{{ range PIPE }}`, `{{ end }}`, `eq` with any number of
arguments, string literals, `$` for the root, and Go's trim markers (`{{- ` and ` -}}` remove
the white space before or after them). Anything else raises, so a template outside the subset
fails a test instead of rendering wrongly. Ollama's rules (template/template.go `Execute` and
`collate`; server: the Modelfile's SYSTEM stands in when a request has no system message):
`.System` is every system message joined by a blank line, `.Messages` all messages with
consecutive ones of the same role merged.
"""

from __future__ import annotations

import re
from typing import Any

_ACTION = re.compile(r"\{\{(-\s)?\s*(.*?)\s*(\s-)?\}\}", re.DOTALL)
_WHITE = " \t\r\n"


def _lex(template: str) -> list[tuple[str, str]]:
    """("text", literal) and ("action", body) items, trim markers applied to the neighbouring text."""
    items: list[tuple[str, str]] = []
    pos, trim_next = 0, False
    for found in _ACTION.finditer(template):
        text = template[pos:found.start()]
        if trim_next:
            text = text.lstrip(_WHITE)
        if found.group(1):
            text = text.rstrip(_WHITE)
        items += [("text", text), ("action", found.group(2))]
        pos, trim_next = found.end(), bool(found.group(3))
    tail = template[pos:]
    items.append(("text", tail.lstrip(_WHITE) if trim_next else tail))
    return items


def _parse(items: list[tuple[str, str]], i: int, stops: tuple[str, ...]) -> tuple[list[Any], int, str]:
    """Nodes up to an action in `stops` (returned with the index after it)."""
    nodes: list[Any] = []
    while i < len(items):
        kind, body = items[i]
        i += 1
        if kind == "text":
            nodes.append(("text", body))
            continue
        word = body.split(" ", 1)[0]
        if word in stops or (body.startswith("else if ") and "else if" in stops):
            return nodes, i, body
        if word == "if":
            nodes_if, i = _parse_if(items, i, body[3:])
            nodes.append(nodes_if)
        elif word == "range":
            inner, i, _ = _parse(items, i, ("end",))
            nodes.append(("range", body[6:], inner))
        elif body.startswith(".") or body.startswith("$"):
            nodes.append(("print", body))
        else:
            raise ValueError(f"unsupported action {{{{ {body} }}}}")
    if stops:
        raise ValueError(f"missing {{{{ {stops[0]} }}}}")
    return nodes, i, ""


def _parse_if(items: list[tuple[str, str]], i: int, condition: str) -> tuple[Any, int]:
    then, i, stop = _parse(items, i, ("else", "else if", "end"))
    otherwise: list[Any] = []
    if stop.startswith("else if "):
        nested, i = _parse_if(items, i, stop[8:])
        otherwise = [nested]
    elif stop == "else":
        otherwise, i, _ = _parse(items, i, ("end",))
    return ("if", condition, then, otherwise), i


def _words(pipe: str) -> list[str]:
    return re.findall(r'"(?:[^"\\]|\\.)*"|\S+', pipe)


def _value(word: str, dot: Any, root: Any) -> Any:
    if word.startswith('"'):
        return word[1:-1]
    base, path = (root, word[1:]) if word.startswith("$") else (dot, word)
    for name in filter(None, path.split(".")):
        base = base.get(name) if isinstance(base, dict) else None
    return base


def _eval(pipe: str, dot: Any, root: Any) -> Any:
    words = _words(pipe)
    if words[0] == "eq":
        first = _value(words[1], dot, root)
        return any(first == _value(w, dot, root) for w in words[2:])
    if len(words) != 1:
        raise ValueError(f"unsupported pipeline {pipe!r}")
    return _value(words[0], dot, root)


def _run(nodes: list[Any], dot: Any, root: Any) -> str:
    out = []
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "print":
            value = _eval(node[1], dot, root)
            out.append("" if value is None else str(value))
        elif node[0] == "if":
            out.append(_run(node[2] if _eval(node[1], dot, root) else node[3], dot, root))
        elif node[0] == "range":
            out.extend(_run(node[2], item, root) for item in _eval(node[1], dot, root) or [])
    return "".join(out)


def render(template: str, values: dict[str, Any]) -> str:
    nodes, _, _ = _parse(_lex(template), 0, ())
    return _run(nodes, values, values)


def modelfile_fields(text: str) -> dict[str, Any]:
    """TEMPLATE, SYSTEM (triple-quoted), FROM and the PARAMETER stop values of a Modelfile."""
    fields: dict[str, Any] = {"stop": re.findall(r'^PARAMETER stop "(.*)"$', text, re.MULTILINE)}
    for key in ("TEMPLATE", "SYSTEM"):
        found = re.search(rf'^{key} """(.*?)"""$', text, re.DOTALL | re.MULTILINE)
        fields[key] = found.group(1) if found else None
    found = re.search(r"^FROM (.+)$", text, re.MULTILINE)
    fields["FROM"] = found.group(1) if found else None
    return fields


def ollama_prompt(modelfile: str, messages: list[dict[str, str]]) -> str:
    """The prompt Ollama's /api/chat renders for `messages` with this Modelfile."""
    fields = modelfile_fields(modelfile)
    if fields["SYSTEM"] and not any(m["role"] == "system" for m in messages):
        messages = [{"role": "system", "content": fields["SYSTEM"]}, *messages]
    collated: list[dict[str, str]] = []
    for m in messages:
        if collated and collated[-1]["Role"] == m["role"] and m["role"] != "tool":
            collated[-1]["Content"] += "\n\n" + m["content"]
        else:
            collated.append({"Role": m["role"], "Content": m["content"]})
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    return render(fields["TEMPLATE"], {"System": system, "Messages": collated, "Response": ""})
