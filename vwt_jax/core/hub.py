"""Checkpoints on the Hugging Face Hub: `hf://ORG/REPO[/FILE][@REVISION]`.

A reference with a FILE names one file of the repository; without one, the
whole repository (a model folder: `config.json` and its weights). Files are
downloaded into the Hugging Face cache (`HF_HUB_CACHE`, by default under
`HF_HOME`) and read from there by later runs; with `HF_HUB_OFFLINE=1` only the
cache is read. Needs the `hub` extra (`pip install 'vwt_jax[hub]'`).
"""

import dataclasses
from typing import Optional

PREFIX = "hf://"
_OTHER_FRAMEWORKS = ["*.h5", "*.msgpack", "*.ot", "*.onnx", "*.tflite", "onnx/*", "openvino/*",
                     "tf_model*", "flax_model*", "rust_model*", "*.gguf", "coreml/*"]


@dataclasses.dataclass(frozen=True)
class HubPath:
  repo_id: str  # ORG/REPO
  filename: str  # '' = the whole repository
  revision: Optional[str]  # a branch, tag or commit; None = main

  def __str__(self) -> str:
    file = f"/{self.filename}" if self.filename else ""
    return f"{PREFIX}{self.repo_id}{file}" + (f"@{self.revision}" if self.revision else "")


def is_hub(path) -> bool:
  return isinstance(path, str) and path.startswith(PREFIX)


def parse(path: str) -> HubPath:
  """`hf://ORG/REPO[/FILE][@REVISION]` -> HubPath; ValueError naming the path otherwise."""
  rest, at, revision = path[len(PREFIX):].partition("@")
  parts = rest.strip("/").split("/")
  if not is_hub(path) or len(parts) < 2 or not all(parts) or (at and not revision):
    raise ValueError(f"{path!r}: expected hf://ORG/REPO[/FILE][@REVISION]")
  return HubPath("/".join(parts[:2]), "/".join(parts[2:]), revision or None)


def resolve(path: str) -> str:
  """A local path for `path`: unchanged unless it is an `hf://` reference,
  which is then the file (or repository folder) in the Hugging Face cache,
  downloaded first when it is not there.

  Raises:
    ImportError: huggingface_hub is not installed.
    FileNotFoundError: the file is not in the cache and cannot be downloaded
      (offline), naming the command that fetches it.
  """
  if not is_hub(path):
    return path
  ref = parse(path)
  try:
    # pylint: disable=g-import-not-at-top
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub import errors
    # pylint: enable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f"{path}: reading the Hugging Face Hub needs huggingface_hub "
                      "(pip install 'vwt_jax[hub]')") from e
  try:
    if ref.filename:
      return huggingface_hub.hf_hub_download(ref.repo_id, ref.filename, revision=ref.revision)
    # A model repository often holds the weights again for other frameworks.
    return huggingface_hub.snapshot_download(ref.repo_id, revision=ref.revision,
                                             ignore_patterns=_OTHER_FRAMEWORKS)
  except errors.LocalEntryNotFoundError as e:
    revision = f"--revision {ref.revision}" if ref.revision else ""
    fetch = " ".join(p for p in ("hf download", ref.repo_id, ref.filename, revision) if p)
    offline = " (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""
    raise FileNotFoundError(
        f"{path} is not in the Hugging Face cache {constants.HF_HUB_CACHE} "
        f"and cannot be downloaded now{offline}: run `{fetch}` where the Hub is reachable "
        "and copy that cache here (or point HF_HUB_CACHE at a cache that holds it)") from e
