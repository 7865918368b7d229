"""One source for every option: metadata on dataclass fields, and one typed loader for mappings of them.

A field declared as ``top_k: int = opt(20, help="Number of eigenpairs (0: none).", domain="0..1e7")`` is an
option: its default, help text, unit, domain and command-line flag are written there and nowhere else.

- `bnlab.cli.options.options_from` builds a command's click options from such fields (so `--help` shows
  the dataclass's default and a default exists once);
- `units_table` writes the table of docs/presets-and-units.md from them (a test checks docs against code);
- `load` / `load_fields` check a JSON-loaded mapping (config.json, grid.json) against the dataclass's type
  hints (`typing.get_type_hints`), with one-line errors naming the field and the type; `load_flat` /
  `load_flat_into` do the same for flat option dicts (a grid's base, a `bnlab reproduce` stage's settings),
  where a nested dataclass's fields stand beside the outer class's.

This module imports neither click nor torch: the dataclasses that use it stay light.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass
from typing import Any, TypeVar

from .errors import BnlabError

META_KEY = "bnlab"
T = TypeVar("T")


@dataclass(frozen=True)
class OptionMeta:
    """What the command line and the docs say about one dataclass field."""

    help: str
    unit: str = ""  # e.g. "per step, mean-loss units"; "" for counts, names and switches
    domain: str = ""  # the values validate() accepts, in words ("> 0", "[0, 1)", "multiple of 10")
    # Click declarations when they are not "--field-name": "--wd"; ("--jobs", "-j"); a bool's
    # "--crop/--no-crop" pair; "--no-verify" for a bool that defaults to True and one flag turns off.
    flags: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()
    default_text: str = ""  # how help states a default that depends on other options ("per norm")
    path: bool = False  # a file or folder (click.Path)
    multiple: bool = False  # a tuple field given as a repeatable option (each also comma-separated)
    cli: bool = True  # False: a field that no command sets directly (still documented, still loaded)


def opt(default: Any = MISSING, *, help: str, unit: str = "", domain: str = "", flag: str | tuple[str, ...] = (),
        choices: typing.Iterable[str] = (), default_text: str = "", path: bool = False, multiple: bool = False,
        cli: bool = True, default_factory: Any = MISSING) -> Any:
    """A dataclass field that is an option (use as the field's default)."""
    meta = OptionMeta(help=help, unit=unit, domain=domain, flags=(flag,) if isinstance(flag, str) else tuple(flag),
                      choices=tuple(choices), default_text=default_text, path=path, multiple=multiple, cli=cli)
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata={META_KEY: meta})
    return dataclasses.field(default=default, metadata={META_KEY: meta})


def option_meta(f: dataclasses.Field) -> OptionMeta | None:
    return f.metadata.get(META_KEY)


def field_default(f: dataclasses.Field) -> Any:
    """A field's default value (its factory's value for mutable defaults)."""
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else MISSING


@functools.cache
def type_hints(cls: type) -> dict[str, Any]:
    """The resolved type of every field of a dataclass (annotations evaluated, not read as strings)."""
    return typing.get_type_hints(cls)


def _union_args(hint: Any) -> tuple[Any, ...] | None:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return None


def is_optional(hint: Any) -> bool:
    args = _union_args(hint)
    return args is not None and type(None) in args


def strip_optional(hint: Any) -> Any:
    """`X | None` -> X (a hint that is not a union stays as it is)."""
    args = _union_args(hint)
    if args is None:
        return hint
    rest = [a for a in args if a is not type(None)]
    return rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]  # noqa: UP007 (a runtime union of hints)


def type_name(hint: Any) -> str:
    """A hint as the module wrote it: 'int', 'tuple[float, ...] | None', 'ModelSpec'."""
    args = _union_args(hint)
    if args is not None:
        return " | ".join(type_name(a) for a in args)
    if hint is type(None):
        return "None"
    if hint is Any:
        return "any value"
    origin = typing.get_origin(hint)
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else type_name(a) for a in typing.get_args(hint))
        return f"{origin.__name__}[{inner}]"
    return getattr(hint, "__name__", str(hint))


class _Mismatch(Exception):
    """A value that does not fit a hint (turned into one BnlabError naming the field by `load_fields`)."""


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class _Where:
    """Where a value lies, for the error message: what is being loaded, and the field path within it."""

    what: str = "configuration"
    unknown: str = "drop"
    prefix: str = ""


def convert(hint: Any, value: Any, where: _Where = _Where()) -> Any:
    """`value` (as JSON loads it) as a value of type `hint`: lists become tuples, ints become floats where a
    float is expected, objects become nested dataclasses. Raises _Mismatch if it does not fit."""
    args = _union_args(hint)
    if args is not None:
        for arm in args:
            try:
                return convert(arm, value, where)
            except _Mismatch:
                continue
        raise _Mismatch
    if hint is Any:
        return value
    if hint is type(None):
        if value is None:
            return None
        raise _Mismatch
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, Mapping):
            raise _Mismatch
        return _make(hint, _load_fields(hint, value, where), where)
    origin = typing.get_origin(hint)
    if origin is tuple:
        return _convert_tuple(hint, value, where)
    if origin in (list, dict):
        return _convert_container(hint, origin, value, where)
    if hint is bool and isinstance(value, bool):
        return value
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is float and _number(value):
        return float(value)
    if hint is str and isinstance(value, str):
        return value
    raise _Mismatch


def _convert_tuple(hint: Any, value: Any, where: _Where) -> tuple[Any, ...]:
    if not isinstance(value, (list, tuple)):
        raise _Mismatch
    items = typing.get_args(hint)
    if len(items) == 2 and items[1] is Ellipsis:
        return tuple(convert(items[0], v, where) for v in value)
    if len(items) != len(value):
        raise _Mismatch
    return tuple(convert(h, v, where) for h, v in zip(items, value))


def _convert_container(hint: Any, origin: type, value: Any, where: _Where) -> Any:
    items = typing.get_args(hint)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        return [convert(items[0], v, where) for v in value] if items else list(value)
    if not isinstance(value, Mapping):
        raise _Mismatch
    if not items:
        return dict(value)
    return {convert(items[0], k, where): convert(items[1], v, where) for k, v in value.items()}


def load_fields(cls: type, d: Any, *, what: str = "configuration", unknown: str = "drop") -> dict[str, Any]:
    """The fields of mapping `d`, each converted to the type `cls` declares for it (nested dataclasses too).

    unknown: "drop" ignores keys that are not fields (config.json files of other versions), "refuse" names
    the first one (an option dict, where an unknown key is a typo). A missing key keeps the field's default.
    """
    if not isinstance(d, Mapping):
        raise BnlabError(f"not a valid bnlab {what} (a {type(d).__name__}, not an object)")
    return _load_fields(cls, d, _Where(what, unknown))


def _load_fields(cls: type, d: Mapping[str, Any], where: _Where) -> dict[str, Any]:
    hints = type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    extra = [k for k in d if k not in names]
    if extra and where.unknown == "refuse":
        raise BnlabError(f"not a valid bnlab {where.what} (unknown field {where.prefix}{extra[0]}; known: "
                         f"{', '.join(names)})")
    out = {}
    for name in (n for n in names if n in d):
        try:
            out[name] = convert(hints[name], d[name], dataclasses.replace(where, prefix=f"{where.prefix}{name}."))
        except _Mismatch:
            raise BnlabError(f"not a valid bnlab {where.what} (field {where.prefix}{name}: expected "
                             f"{type_name(hints[name])}, got {d[name]!r})") from None
    return out


def _make(cls: type[T], fields: dict[str, Any], where: _Where) -> T:
    """cls(**fields), a field without a default that `fields` lacks refused in one line."""
    for f in dataclasses.fields(cls):
        if f.name not in fields and field_default(f) is MISSING:
            raise BnlabError(f"not a valid bnlab {where.what} (field {where.prefix}{f.name} missing)")
    return cls(**fields)


def load(cls: type[T], d: Any, *, what: str = "configuration", unknown: str = "drop") -> T:
    """An instance of dataclass `cls` from a JSON-loaded mapping, every field type-checked (see load_fields)."""
    return _make(cls, load_fields(cls, d, what=what, unknown=unknown), _Where(what, unknown))


def flat_classes(cls: type) -> tuple[type, ...]:
    """`cls` and the dataclasses of its nested dataclass fields: the classes whose fields a flat option dict of
    `cls` gives side by side (HessianOptions's top_k beside its eval's num_samples)."""
    hints = type_hints(cls)
    return (cls, *(hints[f.name] for f in dataclasses.fields(cls) if dataclasses.is_dataclass(hints[f.name])))


def flat_fields(classes: typing.Sequence[type]) -> dict[str, type]:
    """Each option of a flat dict over `classes` and the class that declares it: the first class that has a
    field of that name (nested dataclass fields are not options; their own fields are)."""
    owner: dict[str, type] = {}
    for cls in reversed(classes):
        hints = type_hints(cls)
        owner.update({f.name: cls for f in dataclasses.fields(cls) if not dataclasses.is_dataclass(hints[f.name])})
    return owner


def load_flat(classes: typing.Sequence[type], d: Any, *, what: str,
              only: typing.Collection[str] | None = None) -> dict[str, Any]:
    """A flat option dict (make_config's options, a grid's base, a stage's settings) with every value converted
    to the type of the field of that name in the first of `classes` that has one; an unknown key is refused,
    and so is one outside `only` where given (a field the reader of the dict does not read).

    E.g. ``load_flat((HessianOptions, EvalSpec), {"top_k": 3, "num_samples": 40}, what="stage hessian_bn")``.
    """
    if not isinstance(d, Mapping):
        raise BnlabError(f"not a valid bnlab {what} (a {type(d).__name__}, not an object)")
    owner = flat_fields(classes)
    known = [k for k in owner if only is None or k in only]
    unknown = [k for k in d if k not in known]
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), known, n=1)
        raise BnlabError(f"not a valid bnlab {what} (unknown option {unknown[0]!r}"
                         f"{f'; did you mean {close[0]!r}?' if close else ''})")
    return {k: _load_fields(owner[k], {k: v}, _Where(what, "refuse"))[k] for k, v in d.items()}


def from_flat(cls: type[T], values: Mapping[str, Any], *, what: str) -> T:
    """An instance of `cls` from flat option values (as `load_flat` over `flat_classes(cls)` returns them): its
    nested dataclass fields built from their own fields' values; a field without a default that `values`
    lacks is refused."""
    hints = type_hints(cls)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            sub = hints[f.name]
            out[f.name] = sub(**{g.name: values[g.name] for g in dataclasses.fields(sub) if g.name in values})
        elif f.name in values:
            out[f.name] = values[f.name]
        elif field_default(f) is MISSING:
            raise BnlabError(f"not a valid bnlab {what} (option {f.name!r} missing)")
    return cls(**out)


def load_flat_into(cls: type[T], d: Any, *, what: str, only: typing.Collection[str] | None = None) -> T:
    """An instance of `cls` from a flat option dict over it and its nested dataclasses (see `load_flat` and
    `from_flat`): unknown keys, wrong types and missing required fields refused, each in one line."""
    return from_flat(cls, load_flat(flat_classes(cls), d, what=what, only=only), what=what)


def format_default(value: Any) -> str:
    """A default as help and the docs show it: 0.0005 as 5e-4's %g, tuples comma-separated, None as 'none'."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (tuple, list)):
        return ",".join(format_default(v) for v in value)
    return str(value)


def shown_default(f: dataclasses.Field) -> str:
    """What help and the docs give as a field's default (its default_text where the value depends on others)."""
    meta = option_meta(f)
    return meta.default_text if meta is not None and meta.default_text else format_default(field_default(f))


def cli_flag(f: dataclasses.Field) -> str:
    """The long option that sets field `f` ("--wd" for weight_decay, "--crop" for crop/no-crop)."""
    meta = option_meta(f)
    flags = meta.flags if meta is not None else ()
    longs = [d.split("/")[0] for d in flags if d.startswith("--")]
    return longs[0] if longs else "--" + f.name.replace("_", "-")


def units_table(*classes: type) -> str:
    """The markdown table of the option fields of `classes` that carry a unit (docs/presets-and-units.md)."""
    rows = ["| option | field | default | unit | domain |", "| --- | --- | --- | --- | --- |"]
    for cls in classes:
        for f in dataclasses.fields(cls):
            meta = option_meta(f)
            if meta is None or not meta.unit:
                continue
            flag = f"`{cli_flag(f)}`" if meta.cli else "(no flag)"
            rows.append(f"| {flag} | `{cls.__name__}.{f.name}` | {shown_default(f)} | {meta.unit} | "
                        f"{meta.domain or 'any'} |")
    return "\n".join(rows)
