"""Numerical parity of our models against fixtures made with the official code.

  python -m vwt_jax.tools.parity {titok,titok-generator,llamagen-gpt,llamagen-t2i,llamagen-vq,adm-eval,lpips,vript-formats,vript-hal,vriptor} FIXTURE_DIR

Each kind is a function registered in `KINDS`; it returns one `Result` per
fixture array. Every array of an io file must be either compared or declared
an input, so nothing is silently skipped. Exit status 1 on any failure.
"""

import argparse
import importlib
import sys
from typing import Optional, Sequence

# kind -> "module:function"; imported on use so that `--help` builds no model.
KINDS: dict[str, str] = {
    "titok": "vwt_jax.tools.parity_titok:run_titok",
    "titok-generator": "vwt_jax.tools.parity_titok_generator:run_generators",
    "llamagen-gpt": "vwt_jax.tools.parity_llamagen:run_gpt",
    "llamagen-t2i": "vwt_jax.tools.parity_llamagen:run_t2i",
    "llamagen-vq": "vwt_jax.tools.parity_vqgan:run_vq",
    "adm-eval": "vwt_jax.tools.parity_eval:run_adm_eval",
    "lpips": "vwt_jax.tools.parity_eval:run_lpips",
    "vript-formats": "vwt_jax.tools.parity_vript_formats:run_vript_formats",
    "vript-hal": "vwt_jax.tools.parity_vript_hal:run_vript_hal",
    "vriptor": "vwt_jax.tools.parity_vriptor:run_vriptor",
}


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m vwt_jax.tools.parity", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="kind", required=True)
  for kind in KINDS:
    sub.add_parser(kind, help=f"compare {kind} fixtures").add_argument("fixture_dir")
  args = parser.parse_args(argv)
  module, fn = KINDS[args.kind].split(":")
  results = getattr(importlib.import_module(module), fn)(args.fixture_dir)
  for r in results:
    print(r.line())
  failed = [r for r in results if not r.ok]
  print(f"parity {args.kind}: {len(results)} items compared, {len(failed)} failed"
        + ("" if failed else " -- all OK"))
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
