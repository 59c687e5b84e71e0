"""Command-line options made from a config dataclass: its fields, defaults, types and comments, stated once.

    parser = argparse.ArgumentParser()
    add_options(parser, VLLMServerConfig, exclude={"api_key"})
    config = from_options(VLLMServerConfig, parser.parse_args(argv))

Each field becomes `--field-name`, with the field's default, a parser for its type (bool: `--x/--no-x`;
int, float, str; `list[str]`: comma-separated; dict and nested lists: JSON) and, as help, the comment
written after the field in the class body. Defaults made by a factory are evaluated when the parser is
built (so `--help` shows what a run would use). A CLI keeps its own options for what is not a config field.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import io
import json
import tokenize
import types
import typing
from typing import Any

_MISSING = dataclasses.MISSING


def _field_comments(cls: type) -> dict[str, str]:
    """The `# comment` after each field in the class body (or on the lines just above it)."""
    comments: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        pending: list[str] = []
        last_name, in_field, depth, line_start = "", False, 0, True
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                text = tok.string.lstrip("#").strip()
                if in_field:  # on the field's own line(s): after it, or inside its wrapped value
                    comments[last_name] = f"{comments[last_name]} {text}" if last_name in comments else text
                else:
                    pending.append(text)
            elif tok.type == tokenize.OP and tok.string in "([{":
                depth += 1
            elif tok.type == tokenize.OP and tok.string in ")]}":
                depth -= 1
            elif tok.type == tokenize.NAME and line_start and depth == 0 and tok.start[1] == 4:
                last_name, in_field = tok.string, True
                if pending:
                    comments[last_name] = " ".join(pending)
                    pending = []
            if tok.type in (tokenize.NL, tokenize.NEWLINE):
                line_start = depth == 0
                if tok.type == tokenize.NEWLINE:
                    in_field = False
                if tok.type == tokenize.NL and tok.line.strip() == "":
                    pending = []  # a blank line ends a comment block
            elif tok.type not in (tokenize.INDENT, tokenize.DEDENT, tokenize.COMMENT):
                line_start = False
    return comments


def _parser_for(tp: Any, name: str):
    """(argparse type callable, extra add_argument kwargs) for a field's resolved type."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        real = [a for a in args if a is not type(None)]
        if len(real) == 1:
            inner, kw = _parser_for(real[0], name)
            return (lambda text: None if text.lower() in ("", "none", "null") else inner(text)), kw
    if tp is bool:
        return None, {"action": argparse.BooleanOptionalAction}
    if tp in (int, float, str) or (isinstance(tp, type) and origin is None and tp not in (dict, list, tuple)):
        return tp, {}  # and classes built from one string, such as Path
    if origin in (list, tuple) and args and args[0] in (str, int, float) and len(set(args) - {...}) == 1:
        item = args[0]

        def items(text: str):
            text = text.strip()
            if text.startswith("["):
                return origin(item(v) for v in json.loads(text))
            return origin(item(v.strip()) for v in text.split(",") if v.strip())

        return items, {"metavar": "A,B,..."}

    def as_json(text: str):
        try:
            return json.loads(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"--{name}: not JSON ({exc})") from exc

    return as_json, {"metavar": "JSON"}


def _default(f: dataclasses.Field) -> Any:
    if f.default is not _MISSING:
        return f.default
    if f.default_factory is not _MISSING:
        return f.default_factory()
    return _MISSING


def add_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    exclude: set[str] | frozenset[str] = frozenset(),
    defaults: dict[str, Any] | None = None,
    prefix: str = "",
) -> None:
    """One `--option` per field of dataclass `cls` (except `exclude`); `defaults` overrides the class's."""
    hints = typing.get_type_hints(cls)
    comments = _field_comments(cls)
    defaults = defaults or {}
    for f in dataclasses.fields(cls):
        if f.name in exclude or not f.init:
            continue
        flag = f"--{prefix}{f.name.replace('_', '-')}"
        parse, kw = _parser_for(hints[f.name], f.name)
        default = defaults.get(f.name, _default(f))
        help_text = comments.get(f.name, "")
        shown = "" if default is _MISSING else f"(default: {json.dumps(default, default=str)})"
        if help_text.startswith("default:") and default in ("", None):
            shown = ""  # the comment says what empty means
        kw["help"] = " ".join(t for t in (help_text, shown) if t).replace("%", "%%")
        if default is _MISSING:
            kw["required"] = True
        else:
            kw["default"] = default
        if parse is not None:
            kw["type"] = parse
        parser.add_argument(flag, dest=f"{prefix.replace('-', '_')}{f.name}", **kw)


def from_options(cls: type, args: argparse.Namespace, *, prefix: str = "", **overrides: Any):
    """The dataclass built from the parsed options `add_options` made (plus `overrides`)."""
    values = {}
    for f in dataclasses.fields(cls):
        key = f"{prefix.replace('-', '_')}{f.name}"
        if f.init and hasattr(args, key):
            values[f.name] = getattr(args, key)
    return cls(**{**values, **overrides})
