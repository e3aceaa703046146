"""One config style: frozen dataclasses whose fields are the flags, plus named presets.

An experiment declares its settings as a frozen dataclass deriving from
:class:`Settings`, each field made with :func:`setting` (default, help, and
optionally a check, choices or a parser)::

    @dataclass(frozen=True)
    class Config(Settings):
        steps: int = setting(1000, "training steps", check=POSITIVE)

:func:`add_flags` turns the fields into argparse flags (``steps`` -> ``--steps``; the
type comes from the annotation: ``int``, ``float``, ``str``, ``bool``, ``X | None``,
``tuple[X, ...]``), :func:`add_preset_flag` adds ``--preset NAME``, and
:func:`from_args` builds the validated dataclass: a flag given on the command line
wins over the preset, the preset over the field's default. Checks run both on the
flags (argparse errors, exit 2) and on every constructed instance (:class:`ConfigError`),
so presets and programmatic configs are validated the same way.

Boolean fields: default ``False`` -> a switch (``--resume``); otherwise ``--name on|off``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from batchnorm.experiments.runner.errors import ConfigError

__all__ = [
    "NONNEGATIVE",
    "POSITIVE",
    "Settings",
    "add_flags",
    "add_preset_flag",
    "comma_separated",
    "from_args",
    "interval",
    "setting",
]

#: A check returns what is wrong with a value ("expected ..."), or None when it is fine.
Check = Callable[[Any], "str | None"]
_GIVEN = "_given"  # namespace attribute: the dests given explicitly on the command line


def setting(default: Any, help: str, *, check: Check | None = None,
            choices: tuple[Any, ...] | None = None, parse: Callable[[str], Any] | None = None,
            metavar: str | None = None, flag: bool = True) -> Any:
    """A dataclass field that is also a flag (``flag=False``: recorded, but not a flag)."""
    return dataclasses.field(default=default, metadata={
        "help": help, "check": check, "choices": choices, "parse": parse, "metavar": metavar,
        "flag": flag,
    })


def interval(low: float = -math.inf, high: float = math.inf, *, low_open: bool = False,
             high_open: bool = False) -> Check:
    """A check for a (finite unless a bound is infinite) number between ``low`` and ``high``."""
    if high == math.inf:
        wanted = f"a number {'>' if low_open else '>='} {low:g}"
    else:
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        wanted = f"a number in {left}{low:g}, {high:g}{right}"

    def check(value: Any) -> str | None:
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        return None if above and below else f"expected {wanted}"  # nan fails both

    return check


POSITIVE = interval(0, math.inf, low_open=True, high_open=True)
NONNEGATIVE = interval(0, math.inf, high_open=True)


def comma_separated(kind: Callable[[str], Any]) -> Callable[[str], tuple[Any, ...]]:
    """A parser for ``"a,b,c"`` into a tuple of ``kind``."""
    def parse(text: str) -> tuple[Any, ...]:
        return tuple(kind(item) for item in text.split(","))

    return parse


class Settings:
    """Base of the experiments' frozen settings dataclasses: validated on construction."""

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, field.name)
            for item in value if isinstance(value, tuple) else (value,):
                problem = _problem(field, item)
                if problem is not None:
                    raise ConfigError(f"{_flag(field.name)} {_show(value)}: {problem}")

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON-ready data (tuples become lists)."""
        return {field.name: _plain(getattr(self, field.name))
                for field in dataclasses.fields(self)}  # type: ignore[arg-type]

    def replace(self, **changes: Any) -> Any:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


def add_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type,
              *, defaults: Mapping[str, Any] | None = None) -> None:
    """One flag per field of the dataclass ``cls``; ``defaults`` replace field defaults."""
    hints = typing.get_type_hints(cls)
    parser.set_defaults(**{_GIVEN: frozenset()})  # then none given: the preset applies
    for field in dataclasses.fields(cls):
        if not field.metadata.get("flag", True):
            continue
        default = (defaults or {}).get(field.name, field.default)
        kind, many = _kind(hints[field.name])
        help_text = field.metadata.get("help") or ""
        if default not in (None, False) and "default" not in help_text:
            help_text += f" (default: {_show(default)})"
        options: dict[str, Any] = {"dest": field.name, "default": default, "help": help_text}
        if kind is bool and default is False:
            parser.add_argument(_flag(field.name), action=_GivenSwitch, **options)
            continue
        parse = field.metadata.get("parse")
        options["type"] = _parser(field, kind, many and parse is not None)
        if many and parse is None:
            options["nargs"] = "+"
        if field.metadata.get("choices"):
            options["choices"] = field.metadata["choices"]
        options["metavar"] = field.metadata.get("metavar") or ("{on,off}" if kind is bool
                                                                else None)
        parser.add_argument(_flag(field.name), action=_Given, **options)


def add_preset_flag(parser: argparse.ArgumentParser, presets: Mapping[str, Mapping[str, Any]],
                    default: str = "default", *, help: str | None = None) -> None:
    """``--preset NAME``; ``help`` describes the presets (default: their settings)."""
    described = help or "; ".join(
        f"{name}: " + (", ".join(f"{_flag(k)} {_show(v)}" for k, v in values.items())
                       or "the defaults")
        for name, values in presets.items())
    parser.add_argument("--preset", choices=list(presets), default=default,
                        help=f"named settings ({described}); flags given override them")


def from_args(cls: type, args: argparse.Namespace,
              presets: Mapping[str, Mapping[str, Any]] | None = None) -> Any:
    """The validated ``cls`` of ``args``: given flags, else the preset's value, else the
    default. Writes the values used back into ``args``, so it records what ran.

    Raises :class:`ConfigError` (a check or a rule between fields failed).
    """
    given = getattr(args, _GIVEN, None)  # None: a namespace built by hand, all explicit
    preset = (presets or {}).get(getattr(args, "preset", None) or "", {})
    values = {}
    for field in dataclasses.fields(cls):
        explicit = given is None or field.name in given
        if field.name in preset and not explicit:
            values[field.name] = preset[field.name]
        elif hasattr(args, field.name):
            values[field.name] = _tuples(getattr(args, field.name))
    instance = cls(**values)
    for field in dataclasses.fields(cls):
        if hasattr(args, field.name):
            setattr(args, field.name, getattr(instance, field.name))
    return instance


# ----------------------------------------------------------------------------- internals


class _Given(argparse.Action):
    """Store the value and remember that the flag was given (it then beats the preset)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, values)
        setattr(namespace, _GIVEN, {*getattr(namespace, _GIVEN, ()), self.dest})


class _GivenSwitch(_Given):
    def __init__(self, option_strings, dest, default=False, help=None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        super().__call__(parser, namespace, True, option_string)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _kind(hint: Any) -> tuple[type, bool]:
    """(element type, is a tuple) of an annotation, ``X | None`` read as ``X``."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    if typing.get_origin(hint) is tuple:
        return typing.get_args(hint)[0], True
    return hint, False


def _on_off(text: str) -> bool:
    if text not in ("on", "off"):
        raise ValueError(text)
    return text == "on"


_NAMES = {int: "an integer", float: "a number", bool: "on or off", str: "a string"}


def _parser(field: dataclasses.Field, kind: type, many: bool) -> Callable[[str], Any]:
    """The argparse ``type`` of a field: convert, then check (each element of a tuple)."""
    convert = field.metadata.get("parse") or (_on_off if kind is bool else kind)

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {_NAMES.get(kind, kind.__name__)}, got {text!r}") from None
        for item in value if many else (value,):
            problem = _problem(field, item)
            if problem is not None:
                raise argparse.ArgumentTypeError(f"{problem}, got {text!r}")
        return value

    parse.__name__ = _NAMES.get(kind, kind.__name__)  # argparse names the type in errors
    return parse


def _problem(field: dataclasses.Field, value: Any) -> str | None:
    if value is None:
        return None
    choices = field.metadata.get("choices")
    if choices and value not in choices:
        return f"expected one of {', '.join(map(str, choices))}"
    check = field.metadata.get("check")
    return check(value) if check is not None else None


def _tuples(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple | list):
        return " ".join(map(str, value))
    return str(value)
