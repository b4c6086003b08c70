"""Fork safety: a `ContainerManager` belongs to the process that created it.

After `os.fork()` the child has only the thread that forked. A manager created before the
fork holds the parent's executors (whose threads do not exist in the child), locks that a
parent thread may have held at that instant, and pooled connections whose sockets the
child shares with the parent: used there it hangs, or talks over the parent's sockets.

`fork_guarded` makes such a manager refuse every public call in the child at once with
`ForkedManagerError`, before it touches anything of the parent's, and turns `close()` into
a quiet no-op there (closing would shut the parent's pools and connections down from the
wrong process; the containers are the parent's). The check sits in the method itself, so a
bound method taken before the fork (`submit = manager.spawn_worker`) refuses as well. It is
one comparison per call: `os.register_at_fork` bumps a counter in every child, and a manager
remembers the counter it was created under. The parent is never affected.
"""

from __future__ import annotations

import functools
import inspect
import os
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from ._errors import ForkedManagerError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

__all__ = ["fork_guarded"]

T = TypeVar("T", bound=type)

_generation = 0  # forks between this process and the one that first imported dockyard


def _after_fork_in_child() -> None:
    global _generation  # noqa: PLW0603 - process state by nature: it counts forks
    _generation += 1


os.register_at_fork(after_in_child=_after_fork_in_child)


def _refuse(obj: Any) -> NoReturn:
    raise ForkedManagerError(obj._fork_pid, os.getpid())


def _guard(method: Callable[..., Any], *, quiet: bool) -> Callable[..., Any]:
    @functools.wraps(method)
    def guarded(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self._fork_generation != _generation:
            if quiet:
                return None
            _refuse(self)
        return method(self, *args, **kwargs)

    return guarded


class _OwnedAttribute:
    """An instance attribute that, like the methods, refuses to be read in a forked child."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        if obj._fork_generation != _generation:
            _refuse(obj)
        try:
            return obj.__dict__[self._name]
        except KeyError:
            raise AttributeError(self._name) from None

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__[self._name] = value


def fork_guarded(
    *, quiet: Iterable[str] = (), also: Iterable[str] = (), attributes: Iterable[str] = ()
) -> Callable[[T], T]:
    """Make every public method of a class (and `__enter__`) refuse use after a fork.

    In a child forked after the instance was created, each raises `ForkedManagerError`
    before running; the methods named in `quiet` return None instead (`close`). `also`
    names private methods guarded the same way (seams other dockyard modules call);
    `attributes` names instance attributes whose reads are refused too. A public method
    added to the class later is covered without being named here.
    """
    quiet_names = frozenset(quiet)
    extra = frozenset(also)

    def decorate(cls: T) -> T:
        init: Callable[..., None] = cls.__dict__["__init__"]

        @functools.wraps(init)
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            self._fork_generation = _generation
            self._fork_pid = os.getpid()
            init(self, *args, **kwargs)

        guarded = {
            name: member
            for name, member in vars(cls).items()
            if inspect.isfunction(member)
            and (not name.startswith("_") or name in extra or name == "__enter__")
        }
        for name, member in guarded.items():
            setattr(cls, name, _guard(member, quiet=name in quiet_names))
        for name in attributes:
            setattr(cls, name, _OwnedAttribute(name))
        setattr(cls, "__init__", __init__)  # noqa: B010 - mypy refuses assigning a method
        return cls

    return decorate
