"""Config keys and value types checked against the signatures of the classes the config names.

Why: a typo'd key or a wrongly typed value (``data.params.batch_size=two``) otherwise surfaces as
a ``TypeError`` deep inside a constructor or inside Lightning, often after minutes of model
building, with a traceback and without the config key. Checked here first, it is a
:class:`ConfigKeyError` or :class:`ConfigTypeError` (both :class:`~sgm.util.ConfigError`, so the
command lines print one line and exit with code 2) naming the full key path, the value and what
was expected.

The source of truth is the signature of the named class (or function): a node ``{target,
params}`` may use the parameters of ``target.__init__`` and, where that takes ``**kwargs`` (and so
forwards them to its base class, as every such class of this package does), those of the next
``__init__`` along the method resolution order, and so on. Values are checked against the
annotations where these name what YAML can hold: bool, int, float, str, null, lists, mappings,
``Literal`` choices and unions of them (an int is a float; a bool is neither). An annotation naming
any other class (a ``timedelta``, a ``torch.dtype``) is not checked: no YAML value is one, and the
class decides what it accepts.
"""
from __future__ import annotations

import collections.abc
import difflib
import inspect
import os
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import PurePath
from typing import Any

from .common.errors import ConfigError
from .targets import get_obj_from_str


class ConfigKeyError(ConfigError):
    """A config key that the class it configures does not take, or a required key that is missing."""


class ConfigTypeError(ConfigError):
    """A config value of a type its parameter does not accept."""


@dataclass(frozen=True)
class Signature:
    """The keyword parameters a config node may set.

    Attributes:
        owner: dotted name of the class or function, for messages.
        parameters: name -> parameter, gathered along the ``**kwargs`` chain.
        hints: name -> resolved annotation (missing where it cannot be resolved: not checked).
        accepts_any: True when some ``__init__`` takes ``**kwargs`` that reach no signature we can see:
            any key is accepted.
    """

    owner: str
    parameters: dict[str, inspect.Parameter]
    hints: dict[str, Any]
    accepts_any: bool = False

    def without(self, *names: str) -> Signature:
        """The same signature without the parameters ``names`` (those the code sets itself)."""
        return replace(self, parameters={k: v for k, v in self.parameters.items() if k not in names})

    def required(self) -> list[str]:
        """Parameters without a default (``*args`` / ``**kwargs`` excluded)."""
        return [name for name, p in self.parameters.items() if p.default is inspect.Parameter.empty]


KEYWORD_KINDS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def _resolved_hints(function: Any) -> dict[str, Any]:
    """Annotations of ``function`` as objects; one that cannot be resolved is left out (never checked)."""
    try:
        return typing.get_type_hints(function)
    except Exception:  # one bad forward reference: resolve the others one by one
        pass
    namespace = getattr(sys.modules.get(getattr(function, "__module__", ""), None), "__dict__", {})
    hints = {}
    for name, annotation in getattr(function, "__annotations__", {}).items():
        if isinstance(annotation, str):
            try:
                annotation = eval(annotation, dict(namespace))  # noqa: S307 (annotation text of our own code)
            except Exception:
                continue
        hints[name] = annotation
    return hints


def _own_parameters(function: Any) -> tuple[dict[str, inspect.Parameter], bool]:
    """Keyword parameters of one function (``self`` dropped) and whether it takes ``**kwargs``."""
    signature = inspect.signature(function)
    parameters = {name: p for name, p in signature.parameters.items() if p.kind in KEYWORD_KINDS}
    parameters.pop("self", None)
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    return parameters, takes_kwargs


def signature_of(obj: Any) -> Signature:
    """The keyword parameters ``obj`` (a class or a function) accepts; see the module docstring."""
    owner = f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
    try:
        if not inspect.isclass(obj):
            parameters, takes_kwargs = _own_parameters(obj)
            return Signature(owner, parameters, _resolved_hints(obj), accepts_any=takes_kwargs)
        parameters, hints = {}, {}
        for klass in obj.__mro__:
            init = klass.__dict__.get("__init__")
            if init is None:
                continue
            if klass is object:  # every **kwargs of the chain ended here: nothing more is accepted
                return Signature(owner, parameters, hints)
            own, takes_kwargs = _own_parameters(init)
            for name, parameter in own.items():
                parameters.setdefault(name, parameter)
            for name, hint in _resolved_hints(init).items():
                hints.setdefault(name, hint)
            if not takes_kwargs:
                return Signature(owner, parameters, hints)
        return Signature(owner, parameters, hints, accepts_any=True)
    except (TypeError, ValueError):  # no introspectable signature (a builtin): check nothing
        return Signature(owner, {}, {}, accepts_any=True)


# ----------------------------------------------------------------------------------------
# Values against annotations

SEQUENCE_ORIGINS = (list, tuple, collections.abc.Sequence, collections.abc.MutableSequence,
                    collections.abc.Iterable, collections.abc.Collection)
MAPPING_ORIGINS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)


def _is_union(origin: Any) -> bool:
    return origin is typing.Union or origin is types.UnionType


def accepts(annotation: Any, value: Any) -> bool:
    """Whether a YAML value (plain containers) fits ``annotation``; True for what cannot be checked."""
    if annotation is Any or annotation is inspect.Parameter.empty or isinstance(annotation, (str, typing.TypeVar)):
        return True
    if annotation is None or annotation is type(None):
        return value is None
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if _is_union(origin):
        return any(accepts(arg, value) for arg in args)
    if origin is typing.Literal:
        return any(value == choice and type(value) is type(choice) for choice in args)
    if origin in SEQUENCE_ORIGINS:
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(accepts(a, v) for a, v in zip(args, value))
        return not args or all(accepts(args[0], item) for item in value)
    if origin in MAPPING_ORIGINS:
        return isinstance(value, dict) and (len(args) < 2 or all(accepts(args[1], v) for v in value.values()))
    if origin is not None:  # Callable[...], type[...] and the like
        return True
    return _accepts_class(annotation, value)


def _accepts_class(annotation: Any, value: Any) -> bool:
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if inspect.isclass(annotation) and (issubclass(annotation, PurePath) or annotation is os.PathLike):
        return isinstance(value, str)
    if annotation in (list, tuple, collections.abc.Sequence):
        return isinstance(value, (list, tuple))
    if annotation in (dict, collections.abc.Mapping):
        return isinstance(value, dict)
    return True  # another class: not something a YAML value can be; the class checks it


def describe(annotation: Any) -> str:
    """Readable name of what an annotation accepts (``an int``, ``a list (items: a string) or null``)."""
    names = {bool: "a boolean (true/false)", int: "an int", float: "a number", str: "a string",
             type(None): "null", dict: "a mapping", list: "a list", tuple: "a list"}
    if annotation is None:
        return "null"
    if isinstance(annotation, type) and annotation in names:
        return names[annotation]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if _is_union(origin):
        return " or ".join(dict.fromkeys(describe(arg) for arg in args))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(choice) for choice in args)
    if origin in SEQUENCE_ORIGINS:
        return f"a list (items: {describe(args[0])})" if args else "a list"
    if origin in MAPPING_ORIGINS:
        return "a mapping"
    if inspect.isclass(annotation) and (issubclass(annotation, PurePath) or annotation is os.PathLike):
        return "a path (string)"
    return getattr(annotation, "__name__", str(annotation))


def _yaml_type(value: Any) -> str:
    return {bool: "boolean", int: "int", float: "number", str: "string", type(None): "null", list: "list",
            dict: "mapping"}.get(type(value), type(value).__name__)


def check_value(path: str, value: Any, annotation: Any, owner: str) -> None:
    """Raise :class:`ConfigTypeError` naming ``path``, ``value`` and the expected type when they do not fit."""
    if not accepts(annotation, value):
        raise ConfigTypeError(f"{path}={value!r} is a {_yaml_type(value)}; {owner} expects {describe(annotation)}")


# ----------------------------------------------------------------------------------------
# Keys


def unknown_key_message(path: str, key: str, known: collections.abc.Iterable[str], what: str) -> str:
    """``<path>.<key> is not <what>; did you mean <path>.<close key>? (known: ...)``."""
    def full(name: str) -> str:
        return f"{path}.{name}" if path else name

    known = sorted(known)
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean {full(close[0])}?" if close else ""
    return f"{full(key)} is not {what}{hint} (known: {', '.join(known)})"


def check_keywords(signature: Signature, params: Mapping, path: str, required: bool = False,
                   check_types: bool = True) -> None:
    """Check the keys of ``params`` (the keyword arguments of ``signature.owner``) and their values.

    Args:
        path: config path of ``params`` (``data.params``), prefixed to every key in messages.
        required: also report parameters without a default that ``params`` lacks.
        check_types: also check the values against the annotations.

    Raises:
        ConfigKeyError: an unknown key (with the closest known one) or a missing required key.
        ConfigTypeError: a value its annotation does not accept.
    """
    for key, value in params.items():
        if key not in signature.parameters:
            if signature.accepts_any:
                continue
            raise ConfigKeyError(unknown_key_message(path, key, signature.parameters,
                                                     f"a parameter of {signature.owner}"))
        if check_types and key in signature.hints:
            check_value(f"{path}.{key}", value, signature.hints[key], signature.owner)
    if required:
        missing = [name for name in signature.required() if name not in params]
        if missing:
            raise ConfigKeyError(f"{path} lacks {', '.join(missing)}: required by {signature.owner}")


def check_node(node: Any, path: str, required: bool = True) -> None:
    """Check a ``{target, params}`` node and, recursively, the nodes inside its params.

    Args:
        required: report missing required parameters (False for nested nodes, which the code
            that builds them may complete with keyword arguments of its own).

    Raises:
        ConfigError: a node without ``target``, a target that cannot be imported, or one of the
            errors of :func:`check_keywords`.
    """
    if not isinstance(node, Mapping) or "target" not in node:
        raise ConfigKeyError(f"{path} must be a mapping with a 'target' (a dotted class path) and 'params'")
    try:
        obj = get_obj_from_str(str(node["target"]))
    except ConfigError as err:
        raise ConfigError(f"{path}.target: {err}") from None
    params = node.get("params") or {}
    if not isinstance(params, Mapping):
        raise ConfigTypeError(f"{path}.params={params!r} is a {_yaml_type(params)}; expected a mapping of "
                              f"keyword arguments of {node['target']}")
    check_keywords(signature_of(obj), params, f"{path}.params", required=required)
    for key, value in params.items():
        _check_nested(value, f"{path}.params.{key}")


def _check_nested(value: Any, path: str) -> None:
    """Check the ``{target, ...}`` nodes anywhere inside a parameter value."""
    if isinstance(value, Mapping):
        if isinstance(value.get("target"), str):
            check_node(value, path, required=False)
            return
        for key, item in value.items():
            _check_nested(item, f"{path}.{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_nested(item, f"{path}[{index}]")
