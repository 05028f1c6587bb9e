"""Command-line overrides Hydra's grammar would misread, rewritten before Hydra parses them."""

from __future__ import annotations

import re

# Keys whose value is one comma-separated spec rather than a sweep: `extend=left:128,right:128`.
SPEC_KEYS = ("extend", "sd.extend")


def quote_spec_overrides(argv: list[str], keys: tuple[str, ...] = SPEC_KEYS) -> list[str]:
    """``key=a,b`` -> ``key='a,b'`` for the ``keys`` (with or without ``+``/``++``): Hydra reads an unquoted
    comma as a sweep over ``a`` and ``b`` (and refuses it without ``--multirun``), while these keys take
    the whole list as one value. Quoted, bracketed (``[...]``) and braced (``{...}``) values are kept."""
    pattern = re.compile(rf"^(\+{{0,2}}(?:{'|'.join(re.escape(k) for k in keys)}))=([^'\"\[{{].*,.*)$")
    out = []
    for arg in argv:
        m = pattern.match(arg)
        out.append(f"{m[1]}='{m[2]}'" if m and "'" not in m[2] else arg)
    return out
