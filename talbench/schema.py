"""Strict pydantic schemas whose failures read as one InputError line.

Models here validate plain dicts read from YAML without changing them: the rest of the code keeps
reading the dicts. A field's description ("an integer >= 1") becomes the message
`expected an integer >= 1, got 'ten'`; a Literal field without one, an unknown name, and
unknown keys, name the closest valid choice.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo

from talbench.errors import InputError

TOP_LEVEL = "(top level)"


def unknown(name: str, valid: Any) -> str:
    """'unknown X (did you mean Y?)' with the valid choices."""
    choices = sorted(str(v) for v in valid)
    close = difflib.get_close_matches(str(name), choices, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown '{name}'{hint}; valid: {', '.join(choices)}"


class Problem(ValueError):
    """A failed check inside a validator; `field` may be dotted ('model.embd_dim') from the model's location."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(problem)
        self.field = field
        self.problem = problem


class UnknownKey(Problem):
    """Reported before any other failure: a misspelt key explains the errors that follow from it."""


Bool = Annotated[bool, Field(description="true or false")]
Text = Annotated[str, Field(description="a string")]
Count = Annotated[int, Field(ge=1, description="an integer >= 1")]
Natural = Annotated[int, Field(ge=0, description="an integer >= 0")]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False, description="a number > 0")]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False, description="a number >= 0")]
Fraction = Annotated[float, Field(ge=0, le=1, description="a number in [0, 1]")]
Number = Annotated[float, Field(allow_inf_nan=False, description="a finite number")]


class Strict(BaseModel):
    """No coercion (a bool is not a number, '3' is not an int) and no unknown keys."""

    model_config = ConfigDict(strict=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            for key in data:
                if key not in cls.model_fields:
                    raise UnknownKey(str(key), unknown(key, cls.model_fields).replace("unknown", "unknown key", 1))
        return data


def check(model: type[BaseModel], data: Mapping[str, Any], path: str | Path) -> None:
    """Validate `data` against `model`; the first failure becomes one InputError naming item and field."""
    try:
        model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        error = next((e for e in errors if isinstance((e.get("ctx") or {}).get("error"), UnknownKey)), errors[0])
        item, field, problem = _describe(model, data, error)
        raise InputError(path, item or TOP_LEVEL, field, problem) from None


def _describe(model: type[BaseModel], data: Any, error: Any) -> tuple[str, str, str]:
    parts, info, value = _walk(model, data, error["loc"])
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, Problem):
        parts += cause.field.split(".")
        return ".".join(parts[:-1]), parts[-1], cause.problem
    field = parts.pop() if parts else "-"
    if error["type"] == "missing":
        return ".".join(parts), field, "required key is missing"
    if isinstance(cause, ValueError):  # a field validator's own message
        return ".".join(parts), field, str(cause)
    if error["type"] == "literal_error" and info is not None and not info.description:
        return ".".join(parts), field, unknown(value, get_args(info.annotation))
    expected = info.description if info is not None and info.description else _GENERIC.get(error["type"], error["msg"])
    return ".".join(parts), field, f"expected {expected}, got {_show(value)}{_text_hint(value)}"


def _walk(model: type[BaseModel], data: Any, loc: tuple[Any, ...]) -> tuple[list[str], FieldInfo | None, Any]:
    """(location parts down to the deepest model field or mapping key, that field's info, its value)."""
    parts: list[str] = []
    info: FieldInfo | None = None
    kind: Any = model
    for key in loc:
        inner = _unwrap(kind)
        if isinstance(inner, type) and issubclass(inner, BaseModel) and key in inner.model_fields:
            info = inner.model_fields[key]
            kind = info.annotation
        elif get_origin(inner) is dict:
            kind = get_args(inner)[1]
            info = next((m for m in getattr(kind, "__metadata__", ()) if isinstance(m, FieldInfo)), None)
        else:
            break  # inside one field's value (a list item, a union member): the field is to blame
        parts.append(str(key))
        data = data.get(key) if isinstance(data, Mapping) else None
    return parts, info, data


def _unwrap(kind: Any) -> Any:
    """`X | None` → X (the nullable sections)."""
    args = [a for a in get_args(kind) if a is not type(None)]
    return args[0] if get_origin(kind) in (Union, UnionType) and len(args) == 1 else kind


_GENERIC = {
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "list_type": "a list",
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
}


def _text_hint(value: Any) -> str:
    """YAML 1.1 reads 1e-3 (no dot) as text: say so, since it looks like a number."""
    if not isinstance(value, str):
        return ""
    try:
        float(value)
    except ValueError:
        return ""
    return " (text, not a number: YAML reads 1e-3 as text, write 1.0e-3)"


def _show(value: Any) -> str:
    text = "null" if value is None else repr(value)
    return text if len(text) <= 120 else text[:117] + "..."
