"""JSON documents as frozen dataclasses: decoded with every value checked against its annotation.

The status file is read by pretix-agentctl, which runs as any member of the operators' group and
must never trust its shape: a hand-edited or truncated file, an older or newer daemon. `decode`
turns parsed JSON into the typed document or raises ShapeError naming the path of the first value
that does not fit ("maintenance.lock.by: expected a string, got an integer"), so no reader ever
meets an AttributeError deep inside its formatting. Unknown keys are ignored (a newer daemon may
add some); a missing key takes its field's default, or is an error where the field has none.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, TypeVar, Union

T = TypeVar("T")


class ShapeError(ValueError):
    """A JSON value does not have the shape its dataclass declares; the message names where."""


def _kind(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
            dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)


def _at(path: str, message: str) -> ShapeError:
    return ShapeError(f"{path}: {message}" if path else message)


def decode(annotation: Any, value: Any, path: str = "") -> Any:
    """Given a type annotation (a dataclass, a builtin scalar, `X | None`, list/tuple/dict of those,
    or Any) and a parsed JSON value, return the value converted to it. Raise ShapeError otherwise."""
    if annotation is Any:
        return value
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return decode(option, value, path)
            except ShapeError as error:
                errors.append(error)
        raise errors[0] if len(errors) == 1 else _at(path, f"unexpected {_kind(value)}")
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise _at(path, f"expected an array, got {_kind(value)}")
        item = (typing.get_args(annotation) or (Any,))[0]
        items = [decode(item, element, f"{path}[{index}]") for index, element in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise _at(path, f"expected an object, got {_kind(value)}")
        _, item = typing.get_args(annotation) or (str, Any)
        return {str(key): decode(item, element, f"{path}.{key}" if path else str(key))
                for key, element in value.items()}
    if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
        return _decode_dataclass(annotation, value, path)
    if annotation is bool:
        if not isinstance(value, bool):
            raise _at(path, f"expected true or false, got {_kind(value)}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _at(path, f"expected an integer, got {_kind(value)}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise _at(path, f"expected a finite number, got {_kind(value)}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise _at(path, f"expected a string, got {_kind(value)}")
        return value
    raise TypeError(f"shapes.decode cannot check {annotation!r}")  # a bug in a document's declaration


def _decode_dataclass(cls: type[T], value: Any, path: str) -> T:
    if not isinstance(value, dict):
        raise _at(path, f"expected an object, got {_kind(value)}")
    hints = typing.get_type_hints(cls)
    arguments = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        where = f"{path}.{field.name}" if path else field.name
        if field.name in value:
            arguments[field.name] = decode(hints[field.name], value[field.name], where)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise _at(where, "is missing")
    return cls(**arguments)


def encode(document: Any) -> Any:
    """Given a dataclass instance (or containers of them), return plain JSON-ready values."""
    if dataclasses.is_dataclass(document) and not isinstance(document, type):
        return {field.name: encode(getattr(document, field.name)) for field in dataclasses.fields(document)}
    if isinstance(document, list | tuple):
        return [encode(item) for item in document]
    if isinstance(document, dict):
        return {str(key): encode(item) for key, item in document.items()}
    return document
