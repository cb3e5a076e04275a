"""_elf/record.py: a record behaves as the dataclass of the same declaration, in what the engine uses."""

from __future__ import annotations

import dataclasses
from typing import List, Optional

import pytest

from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.record import FrozenRecordError, factory, record


def declare(decorate, default_list):
    """The same three classes, decorated by ``record`` or by ``dataclasses.dataclass``."""
    @decorate
    class Point:
        x: int
        y: int = 0
        tags: List[str] = default_list()
        note: Optional[str] = None

    @decorate(eq=False)
    class Node:
        name: str
        next: Optional["Node"] = None

    @decorate(frozen=True)
    class Key:
        name: str
        pos: int = 0

    return Point, Node, Key


RECORDS = declare(record, lambda: factory(list))
DATACLASSES = declare(dataclasses.dataclass,
                      lambda: dataclasses.field(default_factory=list))  # pylint: disable=invalid-field-call


@pytest.mark.parametrize("classes", [RECORDS, DATACLASSES], ids=["record", "dataclass"])
def test_init_defaults_and_factories(classes):
    point_cls = classes[0]
    point = point_cls(1)
    assert (point.x, point.y, point.tags, point.note) == (1, 0, [], None)
    assert point_cls(1).tags is not point_cls(1).tags  # a fresh list per instance
    assert point_cls(1, 2, ["a"], note="n").tags == ["a"]
    assert point_cls(x=3, note="k").note == "k"
    with pytest.raises(TypeError):
        point_cls()
    with pytest.raises(TypeError):
        point_cls(1, 2, [], None, 5)
    with pytest.raises(TypeError):
        point_cls(1, z=2)
    assert "tags" not in vars(point_cls)  # no shared mutable default on the class


@pytest.mark.parametrize("classes", [RECORDS, DATACLASSES], ids=["record", "dataclass"])
def test_equality_and_hashing(classes):
    point_cls, node_cls, key_cls = classes
    assert point_cls(1, 2) == point_cls(1, 2) and point_cls(1, 2) != point_cls(1, 3)
    assert point_cls(1) != (1, 0, [], None)
    with pytest.raises(TypeError):
        hash(point_cls(1))  # eq without frozen: unhashable, as dataclasses make it
    first, second = node_cls("a"), node_cls("a")
    assert first != second and len({first, second}) == 2  # eq=False: identity
    assert key_cls("a", 1) == key_cls("a", 1) and hash(key_cls("a", 1)) == hash(key_cls("a", 1))
    assert len({key_cls("a"), key_cls("a"), key_cls("b")}) == 2


@pytest.mark.parametrize("classes", [RECORDS, DATACLASSES], ids=["record", "dataclass"])
def test_frozen_refuses_assignment_and_deletion(classes):
    key = classes[2]("a")
    with pytest.raises(AttributeError):
        key.name = "b"
    with pytest.raises(AttributeError):
        del key.pos
    assert key.name == "a"


def test_frozen_error_is_named():
    with pytest.raises(FrozenRecordError, match="field 'name' of frozen"):
        RECORDS[2]("a").name = "b"


def test_repr_is_the_dataclass_repr_and_survives_cycles():
    for record_cls, dataclass_cls in zip(RECORDS, DATACLASSES):
        args = ("a",) if record_cls.__name__ != "Point" else (1, 2, ["t"])
        assert repr(record_cls(*args)) == repr(dataclass_cls(*args))
    looped = []
    for node_cls in (RECORDS[1], DATACLASSES[1]):
        node = node_cls("a")
        node.next = node
        looped.append(repr(node))
    assert looped[0] == looped[1] and looped[0].endswith("Node(name='a', next=...)")


def test_a_field_without_default_after_one_with_is_refused():
    with pytest.raises(TypeError, match="non-default field 'b' follows a default one"):
        @record
        class Bad:  # pylint: disable=unused-variable
            a: int = 0
            b: int
