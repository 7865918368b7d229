"""Click options generated from the option metadata of dataclass fields (`bnlab.options.opt`).

``@options_from(HessianOptions, exclude=("eval",))`` adds one option per option field: its flag, type
(choices, paths, comma-separated tuples), help and default all come from the field, so a default exists
once. Commands whose options are overrides of a preset or recipe (``bnlab train``, ``sweep``, ``ablate``)
pass ``overrides=True``: the click default is None ("not given": the preset decides) and help shows the
field's default. `pop_fields` takes a dataclass's values back out of a command's keyword arguments.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Mapping
from typing import Any, TypeVar

import click

from ..errors import BnlabError
from ..options import OptionMeta, field_default, option_meta, shown_default, strip_optional, type_hints

F = TypeVar("F", bound=Callable[..., Any])


class FieldOption(click.Option):
    """A click option generated from a dataclass field: it knows its field (tests check defaults with it)."""

    def __init__(self, *args: Any, source: type, field_name: str, override: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.source, self.field_name, self.override = source, field_name, override


class CommaList(click.ParamType):
    """A tuple field given as comma-separated values ("mean,var" -> ("mean", "var")); blank: () or None."""

    name = "list"

    def __init__(self, item: type, flag: str, optional: bool) -> None:
        self.item, self.flag, self.optional = item, flag, optional

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple) or value is None:
            return value
        # Numbers are split as given ("0,,1" is refused); names and integers skip blank items.
        items = value.split(",") if self.item is float else [t.strip() for t in value.split(",") if t.strip()]
        try:
            parsed = tuple(self.item(t) for t in items)
        except ValueError:
            kind = {int: "integers", float: "numbers"}.get(self.item, "values")
            raise BnlabError(f"{self.flag} must be comma-separated {kind}, got {value!r}") from None
        return parsed or (None if self.optional else ())


def _comma_joined(value: Any) -> Any:
    return ",".join(str(v) for v in value) if isinstance(value, tuple) else value


def _split_repeated(optional: bool) -> Callable[[click.Context, click.Parameter, tuple[str, ...]], Any]:
    """The callback of a repeatable option whose values may also be comma-separated."""
    def callback(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> Any:
        items = tuple(p for item in value for p in item.split(",") if p)
        return items or (None if optional else ())
    return callback


def _meta(f: dataclasses.Field, changes: Mapping[str, OptionMeta | Mapping[str, Any]]) -> OptionMeta | None:
    change = changes.get(f.name)
    if isinstance(change, OptionMeta):
        return change
    meta = option_meta(f)
    if change is not None:
        if meta is None:
            raise TypeError(f"field {f.name} has no option metadata to change; give an OptionMeta")
        meta = dataclasses.replace(meta, **change)
    return meta


def field_option(cls: type, f: dataclasses.Field, meta: OptionMeta, *, override: bool) -> Callable[[F], F]:
    """The click option of one field (see the module docstring)."""
    hint = type_hints(cls)[f.name]
    kind, optional = strip_optional(hint), hint is not strip_optional(hint)
    default = field_default(f)
    flags = meta.flags or ("--" + f.name.replace("_", "-"),)
    decls = (*flags, f.name)
    help_text = meta.help + (f" Unit: {meta.unit}." if meta.unit else "")
    kw: dict[str, Any] = {"help": help_text, "cls": FieldOption, "source": cls, "field_name": f.name,
                          "override": override}
    if kind is bool:
        if len(flags) == 1 and "/" not in flags[0]:  # one flag: it sets the value the default is not
            kw.update(is_flag=True, flag_value=not default if not override else True)
        kw["default"] = None if override else default
        if "/" in flags[0]:
            kw["show_default"] = shown_default(f) if override else True
        return click.option(*decls, **_stated(kw))
    if meta.choices:
        kw["type"] = click.Choice(meta.choices)
    elif meta.path:
        kw["type"] = click.Path()
    elif getattr(kind, "__origin__", None) is tuple:
        item = kind.__args__[0]
        if meta.multiple:
            kw.update(multiple=True, callback=_split_repeated(optional))
        else:
            kw["type"] = CommaList(item, flags[0], optional)
    else:
        kw["type"] = kind
    stated = meta.default_text or default is not None  # a None default without words is not shown
    if override:  # not given: None, and the preset decides; help states the field's default
        kw.update(default=None, show_default=shown_default(f) if stated else False)
    elif meta.multiple:
        kw.update(default=default or (), show_default=shown_default(f) if stated else False)
    else:
        kw.update(default=_comma_joined(default), show_default=True if default is not None else meta.default_text
                  or False)
    return click.option(*decls, **_stated(kw))


def _stated(kw: dict[str, Any]) -> dict[str, Any]:
    """A default stated in words goes into the help as click writes defaults (click would parenthesise it)."""
    if isinstance(kw.get("show_default"), str):
        kw["help"] += f"  [default: {kw.pop('show_default')}]"
    return kw


def options_from(cls: type, *, only: Collection[str] | None = None, exclude: Collection[str] = (),
                 overrides: bool = False,
                 changes: Mapping[str, OptionMeta | Mapping[str, Any]] | None = None) -> Callable[[F], F]:
    """A decorator adding the click options of `cls`'s option fields, in field order.

    only / exclude: which fields; overrides: defaults None, the field's default shown in help (the preset
    or recipe decides what "not given" means); changes: per field, an OptionMeta (for a dataclass whose
    fields carry none) or replacements of some of its metadata (e.g. choices known only above `cls`).
    """
    changes = changes or {}
    chosen = []
    for f in dataclasses.fields(cls):
        meta = _meta(f, changes)
        if meta is None or not meta.cli or f.name in exclude or (only is not None and f.name not in only):
            continue
        chosen.append(field_option(cls, f, meta, override=overrides))
    missing = set(only or ()) - {f.name for f in dataclasses.fields(cls)}
    if missing:
        raise TypeError(f"{cls.__name__} has no field(s) {', '.join(sorted(missing))}")

    def decorate(fn: F) -> F:
        for option in reversed(chosen):  # click lists options in the order the decorators are written
            fn = option(fn)
        return fn
    return decorate


def pop_fields(cls: type, options: dict[str, Any]) -> dict[str, Any]:
    """Take the values of `cls`'s fields out of a command's keyword arguments."""
    return {f.name: options.pop(f.name) for f in dataclasses.fields(cls) if f.name in options}
