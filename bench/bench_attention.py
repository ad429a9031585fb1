"""Benchmark the windowed attention: query-block sizes of `attention_banded` against the masked fused kernel.

Shapes of the published THUMOS recipe (batch 2, 4 heads of 128 channels, window 19) at the sequence
lengths of its pyramid levels; a third of the second video is padding. For each length, block size
and dtype it prints forward and forward+backward milliseconds (median of `--repeats`), and the largest
difference from `attention_sdpa` (the dense-mask reference, run on lengths up to 2304 only: it holds a
[T, T] mask). The block size that wins at the lengths that cost the most is `ATTENTION_BLOCK`.

    python bench/bench_attention.py [--lengths 72 576 2304] [--blocks 16 32 64 128] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from talbench.models.blocks import ATTENTION_BLOCK, attention_banded, attention_sdpa  # noqa: E402


def median_ms(fn, repeats: int) -> float:  # noqa: ANN001
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[72, 576, 2304])
    parser.add_argument("--blocks", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--window", type=int, default=19)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch 2, 4 heads x 128, window {args.window}; "
          f"ATTENTION_BLOCK = {ATTENTION_BLOCK}")
    print(f"{'dtype':8} {'T':>5} {'kernel':>12} {'fwd ms':>8} {'fwd+bwd ms':>11} {'max |diff|':>10}")
    for dtype in (torch.float32, torch.bfloat16):
        for length in args.lengths:
            torch.manual_seed(0)
            q, k, v = (torch.randn(2, 4, length, 128, dtype=dtype, requires_grad=True) for _ in range(3))
            valid = torch.ones(2, length, dtype=torch.bool)
            valid[1, 2 * length // 3:] = False
            reference = attention_sdpa(q.float(), k.float(), v.float(), valid, args.window) if length <= 2304 else None
            kernels = [(f"block {b}", lambda b=b: attention_banded(q, k, v, valid, args.window, b)) for b in args.blocks]
            if length <= 2304:
                kernels.append(("sdpa mask", lambda: attention_sdpa(q, k, v, valid, args.window)))
            for name, kernel in kernels:
                with torch.no_grad():
                    fwd = median_ms(kernel, args.repeats)
                    diff = (kernel().float() - reference).abs().max().item() if reference is not None else float("nan")
                both = median_ms(lambda kernel=kernel: kernel().sum().backward(), args.repeats)
                print(f"{str(dtype).split('.')[1]:8} {length:5d} {name:>12} {fwd:8.2f} {both:11.2f} {diff:10.1e}", flush=True)


if __name__ == "__main__":
    main()
