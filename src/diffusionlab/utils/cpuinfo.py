"""The fields of Linux's ``/proc/cpuinfo`` (model name, family, feature flags), without importing torch."""

from __future__ import annotations

from pathlib import Path


def cpuinfo_fields(text: str | None = None) -> dict[str, str]:
    """``{"model name": "AMD EPYC", "flags": "fpu vme ...", ...}``: each field's value for the first CPU listed.
    ``text``: the file's contents (read when None; an empty dict where it cannot be read, e.g. off Linux)."""
    if text is None:
        try:
            text = Path("/proc/cpuinfo").read_text()
        except OSError:
            text = ""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields
