"""A session over a compiled torch step function, with ONNX Runtime's ``run`` signature.

Compiled backends (AOTInductor, TensorRT) run the decoder step as a function of torch tensors
on their device: ``step(input_ids, position_ids, attention_mask, past_kv, steer_bias) ->
(logits, *present)`` with ``past_kv`` a list of ``[B, Hkv, P, D]`` tensors in the manifest's
input order. :class:`TorchStepSession` puts such a function behind the interface the runtime's
:class:`~steerc.runtime.engine.Engine` calls (``run(output_names, feed) -> list[np.ndarray]``),
so every steering method, ``generate``, ``eval`` and ``serve`` run unchanged on it.

Host round trip: the runtime's KV cache lives in numpy, so on CUDA each call copies its inputs
to the device and its outputs back. :func:`greedy_decode_on_device` is the device-resident loop
(KV stays in device buffers between steps) that ``tools/bench_gpu.py`` times.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["TorchStepSession", "greedy_decode_on_device"]


class TorchStepSession:
    """``run(output_names, feed)`` over ``step`` (see the module doc).

    ``input_names`` / ``output_names`` are the engine contract's, in order: three token inputs,
    the KV tensors, ``steer_bias`` last; ``logits`` then the presents."""

    def __init__(self, step: Callable, input_names: Sequence[str], output_names: Sequence[str], device: str = "cpu", name: str = "compiled step"):
        self.step = step
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self.device = device
        self.name = name

    def run(self, output_names, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        import torch

        missing = [n for n in self.input_names if n not in feed]
        if missing:
            raise ValueError(f"{self.name}: missing inputs {missing}")
        # Compiled kernels assume the dense strides they were traced with: copy views (e.g. a
        # slice of position ids) into contiguous buffers.
        tensors = [torch.from_numpy(np.ascontiguousarray(feed[n])).to(self.device) for n in self.input_names]
        ids, positions, mask, *kv, bias = tensors  # [B,S], [B,S], [B,P+S], 2L x [B,Hkv,P,D], [B,L,H,P+S]
        with torch.inference_mode():
            outputs = self.step(ids, positions, mask, kv, bias)
        by_name = dict(zip(self.output_names, outputs))
        unknown = [n for n in (output_names or self.output_names) if n not in by_name]
        if unknown:
            raise ValueError(f"{self.name}: unknown outputs {unknown}; it has {self.output_names}")
        return [by_name[n].detach().cpu().numpy() for n in (output_names or self.output_names)]


def greedy_decode_on_device(step: Callable, prompt_ids, num_layers: int, num_heads: int, num_kv_heads: int, head_dim: int,
                            new_tokens: int, dtype, bias_value: float = 0.0, steered_keys: int = 0):
    """Greedy-decode ``new_tokens`` after ``prompt_ids [1, S]`` (a device tensor) with every
    tensor on the device: one prefill call, then one call per token. ``bias_value`` is added
    on the first ``steered_keys`` key positions of every layer and head (a steered run), else
    the bias is zero. Returns ``(tokens [new_tokens], seconds to first token, seconds per
    decode step)``; the clock waits for the device (``torch.cuda.synchronize``)."""
    import time

    import torch

    device = prompt_ids.device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    S = prompt_ids.shape[1]
    kv = [torch.zeros(1, num_kv_heads, 0, head_dim, dtype=dtype, device=device) for _ in range(2 * num_layers)]  # 2L x [1, Hkv, 0, D]

    def bias_for(total: int):
        bias = torch.zeros(1, num_layers, num_heads, total, dtype=torch.float32, device=device)  # [B, L, H, P+S]
        if steered_keys and bias_value:
            bias[..., :steered_keys] = bias_value
        return bias

    with torch.inference_mode():
        sync()
        start = time.perf_counter()
        positions = torch.arange(S, device=device)[None]
        mask = torch.ones(1, S, dtype=torch.int64, device=device)
        logits, *kv = step(prompt_ids, positions, mask, kv, bias_for(S))
        token = logits[:, -1].argmax(-1, keepdim=True)  # [1, 1]
        sync()
        ttft = time.perf_counter() - start
        tokens = [token]
        start = time.perf_counter()
        for i in range(new_tokens - 1):
            total = S + i + 1
            mask = torch.ones(1, total, dtype=torch.int64, device=device)
            logits, *kv = step(token, torch.full((1, 1), total - 1, device=device, dtype=torch.int64), mask, kv, bias_for(total))
            token = logits[:, -1].argmax(-1, keepdim=True)
            tokens.append(token)
        sync()
        per_step = (time.perf_counter() - start) / max(new_tokens - 1, 1)
    return torch.cat(tokens, 1)[0].cpu(), ttft, per_step
