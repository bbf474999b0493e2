"""Command-line helpers shared by ``harmonica_bench.demo`` and the scripts in ``train/`` and ``eval/``.

* ``HelpFormatter``: ``--help`` keeps the description's layout and shows every option's default.
* ``read_recipe``: a JSON settings file for a transformers ``HfArgumentParser``, refused with a message
  naming the file and the key when it is malformed, has unknown keys or values of the wrong type.
* ``type_problems``: the fields of a dataclass instance whose values do not have the annotated type
  (``HfArgumentParser.parse_dict`` and plain construction do not check).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import json
import types
import typing
from pathlib import Path


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The description as written, and ``(default: ...)`` after every option that takes a value: also
    after options without help text (argparse's own formatter shows defaults only beside help text),
    but not where the help text already says what the default is (it mentions "default")."""

    def _format_action(self, action):
        if not action.help and action.option_strings and action.nargs != 0 and action.default is not argparse.SUPPRESS:
            action = copy.copy(action)
            action.help = "(default: %(default)s)"
        return super()._format_action(action)

    def _get_help_string(self, action):
        if "default" in (action.help or "").lower():
            return action.help
        return super()._get_help_string(action)


class RecipeError(ValueError):
    """A settings file that cannot be used: unreadable, not JSON, unknown keys or wrong types."""


# --------------------------------------------------------------------------------- types
def _describe(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(json.dumps(a) for a in args)
    if origin is list:
        return f"a list of ({_describe(args[0])})" if args else "a list"
    return {type(None): "null", bool: "true or false", int: "an integer", float: "a number",
            str: "a string"}.get(hint, getattr(hint, "__name__", str(hint)))


def _matches(value, hint) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if origin is list:
        return isinstance(value, list) and (not args or all(_matches(v, args[0]) for v in value))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return True  # a type this check does not know: not judged here


def _kind(value) -> str:
    return {type(None): "null", bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


def type_problems(instance) -> list[str]:
    """One line per init field of the dataclass ``instance`` whose value does not have its annotated
    type (ints are numbers, booleans are not integers, ``X | None`` allows null)."""
    hints = typing.get_type_hints(type(instance))
    problems = []
    for f in dataclasses.fields(instance):
        if not f.init:
            continue
        value = getattr(instance, f.name)
        if not _matches(value, hints[f.name]):
            shown = json.dumps(value) if isinstance(value, (str, int, float, bool, type(None), list)) else repr(value)
            if isinstance(value, str):
                shown += " (a string)"
            problems.append(f"{f.name} must be {_describe(hints[f.name])}, got {shown}")
    return problems


# ------------------------------------------------------------------------------- recipes
def _unique_keys(pairs):
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise RecipeError(f"the key {key!r} is given twice")
        seen[key] = value
    return seen


def read_recipe(path, parser, not_in_file: tuple[str, ...] = ()) -> tuple[dict, tuple]:
    """Read the JSON object of settings at ``path`` for ``parser`` (a transformers ``HfArgumentParser``):
    ``(values, dataclass instances)`` through ``parser.parse_dict(values, allow_extra_keys=False)``.

    Raises RecipeError naming the file and what is wrong: a missing or unreadable file, malformed JSON
    (with line and column), a key given twice, a key no dataclass has (with the closest known key),
    or a value of the wrong type. Keys in ``not_in_file`` are refused too (options only for the command
    line, such as the recipe itself). Ranges are the dataclasses' own business (their ``check``).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"recipe {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise RecipeError(f"recipe {path}: cannot be read ({err})") from None
    try:
        values = json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as err:
        raise RecipeError(f"recipe {path} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno} "
                          f"(character {err.pos})") from None
    except RecipeError as err:
        raise RecipeError(f"recipe {path}: {err}") from None
    if not isinstance(values, dict):
        raise RecipeError(f"recipe {path} must hold one JSON object of settings ({{\"key\": value, ...}}), "
                          f"not {_kind(values)}")
    known = sorted({f.name for dt in parser.dataclass_types for f in dataclasses.fields(dt) if f.init}
                   - set(not_in_file))
    try:
        unknown = [k for k in values if k not in known]
        instances = parser.parse_dict({k: v for k, v in values.items() if k not in not_in_file}, allow_extra_keys=False)
        if unknown:
            raise ValueError(unknown)
    except ValueError:
        if not unknown:
            raise
        named = []
        for key in unknown:
            close = difflib.get_close_matches(str(key), known, n=1)
            named.append(repr(key) + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise RecipeError(f"recipe {path}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(named)}; "
                          f"a recipe may set: {', '.join(known)}") from None
    problems = [p for instance in instances for p in type_problems(instance)]
    if problems:
        raise RecipeError(f"recipe {path}: " + "; ".join(problems))
    return values, instances
