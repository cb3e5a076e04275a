# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""Record classes for the diff engine's start-up path: a dataclass declaration, at a fraction of its cost.

``tools/create-diff-object`` starts once per object (kpatch's unit suite: 55 processes; a build:
one per changed object), and most of those runs do a few milliseconds of work.  Importing
``dataclasses`` pulls in ``inspect`` (with ``ast``, ``dis`` and ``tokenize``) and each class it
processes costs a round of introspection plus several ``exec`` calls: together about 17 ms of
every run, more than a small case's whole diff.  ``record`` takes the same declaration (annotated
fields, defaults, ``factory(list)`` for ``field(default_factory=list)``) and builds what the
engine uses of a dataclass:

* ``__init__`` (generated source, so that creating the millions of relocations and symbols of a
  big object costs what a hand-written ``__init__`` costs);
* ``__repr__`` over the fields, safe for the model's cycles (a symbol's section's symbol);
* with ``eq=True`` (the default), ``__eq__`` over the fields and no ``__hash__``, as dataclasses;
  ``eq=False`` keeps identity, as the ELF model needs;
* with ``frozen=True``, assignment refused and ``__hash__`` over the fields.

Type checkers and linters see ``dataclasses.dataclass`` itself (the ``TYPE_CHECKING`` branch), so
a record is checked as the dataclass it behaves like.  ``tests/unit/test_elf_record.py`` holds the
two to the same behaviour.
"""

from __future__ import annotations

from operator import attrgetter

TYPE_CHECKING = False  # typing stays off the engine's start-up path (see above)
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any, Callable, Dict, List, Tuple


class FrozenRecordError(AttributeError):
    """Assignment to a field of a ``frozen=True`` record (dataclasses' FrozenInstanceError)."""


class _Factory:
    """``factory(make)``, dataclasses' ``field(default_factory=make)``: the marker left as a field's
    default, so that each instance gets ``make()`` unless given a value."""

    __slots__ = ("make",)

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make


def _record(cls: Any = None, *, eq: bool = True, frozen: bool = False) -> Any:
    """Decorate ``cls`` (``@record``, ``@record(eq=False)``, ``@record(frozen=True)``)."""
    def wrap(target: type) -> type:
        return _build(target, eq, frozen)
    return wrap if cls is None else wrap(cls)


def _fields(cls: type) -> List[Tuple[str, Any]]:
    """(name, default or _MISSING) for each annotated field, in declaration order; ClassVar excluded."""
    annotations = cls.__dict__.get("__annotations__")
    if annotations is None and "__annotate__" in cls.__dict__:
        annotations = cls.__annotations__  # Python 3.14 computes them on first access
    if not annotations:
        raise TypeError("%s: a record declares its fields as annotations, and it has none" % cls.__qualname__)
    found = []
    for name, annotation in annotations.items():
        if str(annotation).startswith(("ClassVar", "typing.ClassVar")):
            continue
        found.append((name, cls.__dict__.get(name, _MISSING)))
    return found


_MISSING = object()


def _init_source(cls: type, fields: List[Tuple[str, Any]], frozen: bool, scope: Dict[str, Any]) -> str:
    """The source of ``__init__``; defaults and factories are bound through ``scope``."""
    params, body, seen_default = ["self"], [], False
    for name, default in fields:
        if default is _MISSING:
            if seen_default:
                raise TypeError("%s: non-default field %r follows a default one" % (cls.__qualname__, name))
            params.append(name)
            value = name
        elif isinstance(default, _Factory):
            seen_default = True
            scope["_make_" + name] = default.make
            params.append("%s=_MISSING" % name)
            value = "_make_%s() if %s is _MISSING else %s" % (name, name, name)
        else:
            seen_default = True
            scope["_default_" + name] = default
            params.append("%s=_default_%s" % (name, name))
            value = name
        body.append("    _set(self, %r, %s)" % (name, value) if frozen else "    self.%s = %s" % (name, value))
    return "def __init__(%s):\n%s\n" % (", ".join(params), "\n".join(body) or "    pass")


def _build(cls: type, eq: bool, frozen: bool) -> type:
    fields = _fields(cls)
    names = tuple(name for name, _default in fields)
    scope: Dict[str, Any] = {"_MISSING": _MISSING, "_set": object.__setattr__}
    # generated source, as dataclasses generate it: the fastest __init__ there is (see the docstring)
    exec(_init_source(cls, fields, frozen, scope), scope)  # pylint: disable=exec-used
    init = scope["__init__"]
    init.__qualname__ = "%s.__init__" % cls.__qualname__
    cls.__init__ = init
    for name, default in fields:
        if isinstance(default, _Factory):
            delattr(cls, name)  # as dataclasses: the class holds no shared mutable default
    cls.__repr__ = _repr_of(names)
    if eq:
        cls.__eq__ = _eq_of(names)
        cls.__hash__ = _hash_of(names) if frozen else None
    if frozen:
        cls.__setattr__ = _refuse_assignment
        cls.__delattr__ = _refuse_deletion
    return cls


_REPR_ACTIVE: "set[int]" = set()


def _repr_of(names: Tuple[str, ...]) -> Callable[[Any], str]:
    def __repr__(self: Any) -> str:
        key = id(self)
        if key in _REPR_ACTIVE:
            return "..."  # a cycle back to a record being printed
        _REPR_ACTIVE.add(key)
        try:
            return "%s(%s)" % (type(self).__qualname__,
                               ", ".join("%s=%r" % (name, getattr(self, name)) for name in names))
        finally:
            _REPR_ACTIVE.discard(key)
    return __repr__


def _values_of(names: Tuple[str, ...]) -> Callable[[Any], Tuple[Any, ...]]:
    """The fields' values as one tuple (attrgetter of one name gives the bare value)."""
    if len(names) == 1:
        single = attrgetter(names[0])
        return lambda self: (single(self),)
    return attrgetter(*names) if names else (lambda self: ())


def _eq_of(names: Tuple[str, ...]) -> Callable[[Any, Any], Any]:
    values = _values_of(names)

    def __eq__(self: Any, other: Any) -> Any:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return values(self) == values(other)  # tuples, as dataclasses compare
    return __eq__


def _hash_of(names: Tuple[str, ...]) -> Callable[[Any], int]:
    values = _values_of(names)

    def __hash__(self: Any) -> int:
        return hash(values(self))
    return __hash__


def _refuse_assignment(self: Any, name: str, value: Any) -> None:
    raise FrozenRecordError("cannot assign to field %r of frozen %s" % (name, type(self).__qualname__))


def _refuse_deletion(self: Any, name: str) -> None:
    raise FrozenRecordError("cannot delete field %r of frozen %s" % (name, type(self).__qualname__))


if TYPE_CHECKING:  # pragma: no cover
    from dataclasses import dataclass as record

    def factory(make: Callable[[], Any]) -> Any:
        """``field(default_factory=make)``: to a type checker, a field with a default."""
        return make()
else:
    record, factory = _record, _Factory
