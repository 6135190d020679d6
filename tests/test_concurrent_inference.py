"""Inference on one shared network from several threads at once (docs/reliability.md, "Concurrent requests").

The served network is one module used by every request: decoding in bands of rows, whole-grid
predictions and the MONAI Label app's slices must keep no per-call state on it, so any mix of
concurrent calls gives each caller exactly its solo result.
"""

from __future__ import annotations

import threading

import torch


def _run_all(calls):
    """Run ``calls`` (zero-argument functions) in threads started together; their results (or exceptions)."""
    results = [None] * len(calls)
    start = threading.Barrier(len(calls))

    def worker(i):
        start.wait()
        try:
            results[i] = calls[i]()
        except BaseException as e:  # reported by the test, not swallowed
            results[i] = e

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results


def test_band_decoding_and_whole_predictions_run_concurrently_with_solo_results(make_tiny_net):
    from scripts.workflows.inference import MattingInferer

    torch.set_num_threads(1)
    net = make_tiny_net(norm="INSTANCE").eval()
    large = torch.rand(1, 1, 96, 80, generator=torch.Generator().manual_seed(1))
    small = torch.rand(1, 1, 24, 24, generator=torch.Generator().manual_seed(2))
    # a large output is decoded in bands (one pass per instance norm of the output stages)
    band_inferer = MattingInferer(output_size=(300, 260), max_internal_size=32, band_pixels=20 * 260)
    whole_inferer = MattingInferer(max_internal_size=32)
    with torch.no_grad():
        solo_large = band_inferer(large, net)["alpha"]
        solo_small = whole_inferer(small, net)["alpha"]
        calls = [lambda: band_inferer(large, net)["alpha"]] * 2 + [lambda: whole_inferer(small, net)["alpha"]] * 6
        for _ in range(2):
            results = _run_all(calls)
            errors = [r for r in results if isinstance(r, BaseException)]
            assert not errors, errors
            for r in results[:2]:
                assert torch.equal(r, solo_large)
            for r in results[2:]:
                assert torch.equal(r, solo_small)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())
