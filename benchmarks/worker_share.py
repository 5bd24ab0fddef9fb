"""One worker's share of a preprocessing run (every other block), in this process: for counting its instructions.

Timings on a shared 2-core machine move by tens of percent with the other jobs' load; instruction counts do not.
Count a worker's work, cold cache, with the start-up counted apart (``--blocks 0``)::

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python benchmarks/worker_share.py --input input.json --blocks 4     # then again with --blocks 0

The tokenizer is the engine's (``--tokenizer-model``, default Mixtral-8x22B v1), MLPerf's flags (no EOD).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator.data import preprocess  # noqa: E402
from orchestrator.data.stream import content_blocks, line_blocks  # noqa: E402
from orchestrator.data.tokenizer import TokenizerSpec  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, type=Path, help="JSON Lines file (.json or .json.gz)")
    parser.add_argument("--blocks", type=int, default=4, help="blocks of the share to encode (0: start-up only)")
    parser.add_argument("--tokenizer-model", default=None, help="SentencePiece model (default: Mixtral-8x22B v1)")
    args = parser.parse_args()
    model = args.tokenizer_model
    if model is None:
        import mistral_common

        model = str(Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1")
    blocks = list(line_blocks(content_blocks(args.input), preprocess.BLOCK_BYTES))[::2][: args.blocks]
    scratch = tempfile.mkdtemp(prefix="worker-share-")
    try:
        preprocess._init_worker(TokenizerSpec("SentencePieceTokenizer", model), ("text",), False, True, scratch)
        for first_line, block in blocks:
            preprocess._encode_block(first_line, block)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
