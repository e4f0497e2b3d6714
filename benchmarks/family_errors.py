"""Logits error of every supported family against transformers (the README's family table).

    python benchmarks/family_errors.py [--no-convert]

Each family's tiny random checkpoint is the one the tests use (`tests/test_families.py`:
transformers' own config class, fixed seed, every parameter perturbed). Printed per family:
max abs fp32 logits difference of the re-authored PyTorch model (compare, 12-token
prompt) and of the converted fp32 .tflite (prefill 8 + 4 decode steps).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-convert", action="store_true")
    args = ap.parse_args()
    from workbench._quiet import import_stack

    import_stack()
    import transformers

    from tests.conftest import make_hf_checkpoint
    from tests.test_families import CASES, PROMPT, TINY
    from workbench import Blueprint, families
    from workbench.compare import compare
    from workbench.convert import convert, prewarm
    from workbench.mapping import Mapping

    prewarm()
    print(f"{'model_type':<12} {'params':>8} {'own layers':>10} {'re-authored':>12} {'converted':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for i, (model_type, (cls, extra, _)) in enumerate(CASES.items()):
            config = getattr(transformers, cls)(**{**TINY, **extra}, attn_implementation="eager")
            d = make_hf_checkpoint(Path(tmp) / model_type, config, seed=i)
            bp = Blueprint.from_hf(d)
            m = Mapping.propose(bp, d)
            c = compare(d, bp, m, prompts=[PROMPT], max_new_tokens=4)
            conv = "-"
            if not args.no_convert:
                res = convert(m, recipe="none", prefill=[8], kv=32, out=Path(tmp) / "out", check_steps=4).result()
                conv = f"{res.check['max_abs_diff']:.1e}"
                prewarm()
            print(f"{model_type:<12} {bp.summary().params:>8} {str(bp.needs_own_layers()):>10} "
                  f"{c.logits['max_abs_diff']:>12.1e} {conv:>10}", flush=True)
    print(f"families: {', '.join(families.supported())}")


if __name__ == "__main__":
    main()
