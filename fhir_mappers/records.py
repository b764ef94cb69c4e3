"""`quick_init`: a frozen dataclass built at the cost of a plain one.

A frozen dataclass's generated `__init__` stores each field with `object.__setattr__`
(its own `__setattr__` refuses): a call per field, about 150 ns each. The mappers build
frozen records by the thousand (a Visit has 25 fields), and on the bench population that
was a tenth of the tolerant mapping's time. `quick_init` swaps in an `__init__` with the
same signature (names, order, defaults, `__post_init__`) that writes the instance's
`__dict__` directly, which is all `object.__setattr__` does for a plain field. Everything
else stays the dataclass's: frozen assignment still raises, eq/hash/repr/replace/pickle
are unchanged, and type checkers still see the dataclass.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

_T = TypeVar("_T")


def quick_init(cls: type[_T]) -> type[_T]:
    """Decorate a `@dataclass(frozen=True)` (placed above it): see the module docstring.

    Only the shapes the mappers use: positional-or-keyword fields, plain defaults, an
    optional `__post_init__`; anything else (slots, default factories, keyword-only or
    init=False fields, InitVar) is refused when the class is defined, not mis-built.
    """
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or "__slots__" in cls.__dict__:
        raise TypeError(f"{cls.__name__}: quick_init is for frozen dataclasses without slots")
    names: list[str] = []
    defaults: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if not f.init or f.kw_only or f.default_factory is not dataclasses.MISSING:
            raise TypeError(f"{cls.__name__}.{f.name}: not supported by quick_init")
        if f.default is not dataclasses.MISSING:
            defaults[f"_default_{f.name}"] = f.default
            names.append(f"{f.name}=_default_{f.name}")
        else:
            names.append(f.name)
    lines = [f"def __init__(self, {', '.join(names)}):", "    d = self.__dict__"]
    lines += [f"    d[{f.name!r}] = {f.name}" for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    if hasattr(cls, "__post_init__"):
        lines.append("    self.__post_init__()")
    namespace: dict[str, Any] = {}
    # The same technique as dataclasses itself; the source is built from field names only.
    exec("\n".join(lines), defaults, namespace)  # noqa: S102
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__doc__ = cls.__init__.__doc__
    cls.__init__ = init  # type: ignore[method-assign]
    return cls


__all__ = ["quick_init"]
