"""The package's layer order, read from the README's architecture picture: every module of a layer imports
(at the top or inside a function) only its own layer and the layers below it, and the plain-PyTorch layers
never import Lightning or Hydra."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "diffusionlab"
# Only these may use the training / configuration frameworks (README: "lit/ and data/ wrap them; Hydra only
# in configs/, cli/ and the 3 entry points").
FRAMEWORKS = {"lightning": {"lit", "data", "cli"}, "hydra": {"cli"}, "omegaconf": {"cli"}}


def readme_layers() -> list[str]:
    """The layers of ``src/diffusionlab/`` from the bottom up, as the README's architecture block lists them
    (top to bottom: ``  cli/ ...`` first, ``  utils/ ...`` last)."""
    text = (ROOT / "README.md").read_text()
    block = text.split("## Architecture", 1)[1].split("```", 2)[1]
    tree = block.split("src/diffusionlab/", 1)[1]
    return [m.group(1) for m in re.finditer(r"^  (\w+)/", tree, flags=re.M)][::-1]


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """``(line, absolute module name)`` of every import in ``path``, relative ones resolved."""
    package = ["diffusionlab", *path.relative_to(PACKAGE).parent.parts]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            if module == "diffusionlab":  # from diffusionlab import nets
                out += [(node.lineno, f"diffusionlab.{alias.name}") for alias in node.names]
            else:
                out.append((node.lineno, module))
    return out


def layer_of(path: Path) -> str | None:
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else None


def violations(layers: list[str]) -> list[str]:
    rank = {name: i for i, name in enumerate(layers)}
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        layer = layer_of(path)
        if layer is None:
            continue
        where = path.relative_to(ROOT)
        for line, module in imported_modules(path):
            parts = module.split(".")
            if parts[0] == "diffusionlab" and len(parts) > 1 and parts[1] in rank:
                if rank[parts[1]] > rank[layer]:
                    found.append(f"{where}:{line} ({layer}) imports {module} ({parts[1]} is above {layer})")
            allowed = FRAMEWORKS.get(parts[0])
            if allowed is not None and layer not in allowed:
                found.append(f"{where}:{line} ({layer}) imports {module} (only {sorted(allowed)} may)")
    return found


def test_readme_lists_every_layer_in_the_intended_order():
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    layers = readme_layers()
    assert sorted(layers) == sorted(packages), "README's architecture block and src/diffusionlab/ disagree"
    assert layers == ["utils", "diffusion", "sampling", "nets", "sd", "pipelines", "metrics", "data", "lit", "cli"]


def test_each_layer_imports_only_the_layers_below_it():
    assert violations(readme_layers()) == []


def test_the_check_sees_upward_and_lazy_imports(tmp_path, monkeypatch):
    """The checker itself: an upward import inside a function, a relative one and a framework import are found."""
    fake = tmp_path / "src" / "diffusionlab"
    for layer, source in {
        "nets": "def f():\n    from diffusionlab.sd.config import sd15\n",
        "sampling": "from ..pipelines import generate\nimport lightning\n",
        "utils": "from diffusionlab import nets\n",
        "sd": "from diffusionlab.nets.vae import AutoencoderKL\nfrom . import config\n",
    }.items():
        (fake / layer).mkdir(parents=True)
        (fake / layer / "__init__.py").write_text("")
        (fake / layer / "mod.py").write_text(source)
    monkeypatch.setattr(f"{__name__}.PACKAGE", fake)
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    found = violations(["utils", "sampling", "nets", "sd", "pipelines"])
    assert len(found) == 4, found
    assert any("nets/mod.py:2 (nets) imports diffusionlab.sd.config" in f for f in found)
    assert any("imports diffusionlab.pipelines (pipelines is above sampling)" in f for f in found)
    assert any("imports lightning" in f for f in found)
    assert any("utils/mod.py:1 (utils) imports diffusionlab.nets" in f for f in found)
