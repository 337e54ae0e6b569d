"""Every import of vwt_jax follows the layer table of docs/architecture.md."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "vwt_jax"
SUBPACKAGES = ("core", "data", "models", "sampling", "conversion", "losses", "families",
               "evaluation", "training")
BELOW = {
    "core": set(),
    "data": {"core"},
    "models": {"core"},
    "sampling": {"models", "core"},
    "conversion": {"models", "core"},
    "losses": {"conversion", "models", "core"},
    # families build configs (a release's, an official folder's) from the config
    # files' sections: config_common imports only what families may import.
    "families": {"config_common", "conversion", "sampling", "models", "data", "core"},
    "evaluation": {"families", "config_common", "conversion", "sampling", "models", "data",
                   "core"},
    "training": {"evaluation", "families", "config_common", "losses", "sampling", "conversion",
                 "models", "data", "core"},
    "config_common": {"models", "data", "core"},
}
# Commands: the modules at the package root and tools/.
COMMANDS = set(SUBPACKAGES) - {"training"} | {"commands"}
# The one way into training for a command: main.py runs the family's trainer.
TRAINING_ENTRY = "vwt_jax/main.py"


def _layer(parts: tuple[str, ...]) -> str:
  """The layer of a module path relative to the package root (no '.py')."""
  if parts[0] in SUBPACKAGES:
    return parts[0]
  if parts[0] == "config_common":
    return "config_common"
  return "commands"


def _imports(path: pathlib.Path) -> list[tuple[int, tuple[str, ...]]]:
  """(line, module path below vwt_jax) of every import of vwt_jax in a file."""
  found = []
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names = node.module.split(".")
      if names[0] != "vwt_jax":
        continue
      if len(names) == 1:  # from vwt_jax import families
        found += [(node.lineno, (alias.name,)) for alias in node.names]
      else:
        found.append((node.lineno, tuple(names[1:])))
    elif isinstance(node, ast.Import):
      found += [(node.lineno, tuple(a.name.split(".")[1:])) for a in node.names
                if a.name.split(".")[0] == "vwt_jax" and "." in a.name]
  return found


def _violations() -> list[str]:
  bad = []
  for path in sorted(PACKAGE.rglob("*.py")):
    source = path.relative_to(PACKAGE).with_suffix("").parts
    src = _layer(source)
    allowed = COMMANDS if src == "commands" else BELOW[src] | {src}
    where = f"vwt_jax/{'/'.join(source)}.py"
    for line, target in _imports(path):
      dst = _layer(target)
      if dst == "training" and where == TRAINING_ENTRY:
        continue
      if dst not in allowed:
        bad.append(f"{where}:{line} ({src}) imports vwt_jax.{'.'.join(target)} ({dst})")
  return bad


def test_imports_go_down_the_layers():
  assert _violations() == []


@pytest.mark.parametrize("source,target,allowed", [
    (("models", "gpt"), ("conversion", "torch_state"), False),
    (("data", "codes"), ("families", "common"), False),
    (("sample",), ("training", "generator"), False),
    (("families", "gpt"), ("sampling", "autoregressive"), True),
    (("training", "titok"), ("families", "titok"), True),
])
def test_the_rule_tells_up_from_down(source, target, allowed):
  src, dst = _layer(source), _layer(target)
  assert (dst in (COMMANDS if src == "commands" else BELOW[src] | {src})) == allowed
