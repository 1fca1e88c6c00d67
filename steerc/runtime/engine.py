"""``Engine``: a loaded engine folder (manifest checked, a step session of the chosen backend, tokenizer)."""

from __future__ import annotations

import json
import logging
import os
import threading
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import numpy as np

from steerc.backends import canonical_name, get_backend
from steerc.backends.onnx import PREPACK_ONLY_OPS, SharedWeights, create_session
from steerc.capture.io_spec import DecoderGeometry
from steerc.engine_format import read_manifest
from steerc.errors import EngineError, SteercError
from steerc.runtime.kv_buffers import KV_CHUNK, InPlaceSession, KVBuffers, round_capacity
from steerc.runtime.kv_cache import KVCache

__all__ = ["Engine", "ContextTooLongError", "SHARE_MODES", "open_session"]

log = logging.getLogger(__name__)

_NP_DTYPES = {"float32": np.float32, "float16": np.float16}

# What the step and analysis sessions share in memory (Engine.load's ``share``, default $STEERC_SHARE
# or "arena"; numbers in docs/BENCHMARKS.md): "off" nothing; "arena" one CPU memory arena (exact,
# no speed cost); "weights" the arena and one copy of the weights (prepacking off, so MatMul
# results move by float rounding and fp32 decode is slower; engines with MatMulNBits fall back).
SHARE_MODES = ("off", "arena", "weights")


class ContextTooLongError(SteercError):
    """A request needs more positions than the engine was compiled for."""


class Engine:
    """Run one decoder step at a time; see :mod:`steerc.runtime.generate` for the loops."""

    def __init__(self, folder: Path, manifest: dict, session, tokenizer, device: str):
        self.kv_dtype = _kv_dtype(folder, manifest)
        self.folder = folder
        self.manifest = manifest
        self.session = session
        self.tokenizer = tokenizer
        self.device = device
        self.geometry = DecoderGeometry(**manifest["geometry"])
        self.max_seq_len: int = manifest["max_seq_len"]
        self.max_batch: int = manifest["max_batch"]
        self.input_names = [s["name"] for s in manifest["inputs"]]
        self.output_names = [s["name"] for s in manifest["outputs"]]
        # Shared attention: layers without a key cache (their KV cache holds values only).
        self.keyless_layers: tuple[int, ...] = tuple((manifest.get("share_attention") or {}).get("shared_layers", ()))
        # "in-place": the step graph writes into KVBuffers (engines compiled before --kv are "concat").
        self.kv_layout: str = (manifest.get("kv") or {}).get("layout", "concat")
        self.kv_chunk = KV_CHUNK  # in-place engines: KV buffers grow by this many positions
        self.eos_token_ids = _eos_ids(folder)
        self.threads: int | None = None
        self.backend = "onnx"  # what runs the step graph (see load)
        self.share = "off"  # what the sessions share in memory (see load)
        self.weights: SharedWeights | None = None  # the weights both sessions run from (share "weights")
        self._analysis = None  # the analysis session, opened on first use (only context preparation needs it)
        self._selector = None  # the selector session and its input names, opened on first use
        self._analysis_lock = threading.Lock()  # sessions run concurrently; opening one happens once
        # Every session call (forward, analyze, select_scores) runs under this. A library caller
        # leaves it open; the server sets a fair lock so prefill chunks and batched decode steps
        # take turns (steerc.server.batching).
        self.gate: AbstractContextManager = nullcontext()

    @property
    def engine_id(self) -> str:
        """Identifies the engine's exact contents (the manifest checksum covers every file's sha256)."""
        return self.manifest["checksum"]

    @property
    def has_analysis(self) -> bool:
        return bool(self.manifest.get("analysis"))

    @property
    def has_queries(self) -> bool:
        """The analysis graph also outputs ``attn_queries`` (engines compiled before it did not)."""
        analysis = self.manifest.get("analysis") or {}
        return any(o.get("name") == "attn_queries" for o in analysis.get("outputs", ()))

    @property
    def selector_layers(self) -> int:
        """How many leading layers the selector graph covers (:meth:`select_scores`); 0 when the
        engine has none (compiled before it, or its analysis graph could not be derived)."""
        return int((self.manifest.get("selector") or {}).get("layers", 0))

    @property
    def selector_score_layers(self) -> tuple[int, ...]:
        """The layers whose attention :meth:`select_scores` returns, in its order (those of the
        covered layers that hold a default selector head; every covered layer in engines that do
        not say); empty without a selector graph."""
        entry = self.manifest.get("selector") or {}
        return tuple(int(x) for x in entry.get("score_layers", range(self.selector_layers)))

    @classmethod
    def load(cls, folder: str | Path, device: str = "cpu", threads: int | None = None, check_files: bool = True, backend: str = "onnx",
             share: str | None = None) -> "Engine":
        """Check the manifest (format version, every file's sha256) and open a session on
        ``backend``, a name of :data:`steerc.backends.BACKENDS`: ``onnx`` (ONNX Runtime, always
        present), ``aoti`` (the AOTInductor package of ``--backend aoti``) or ``tensorrt`` (the
        plan of ``--backend tensorrt``; the old name ``torch-tensorrt`` is accepted). The analysis
        graph (context preparation) runs on ONNX Runtime whatever the backend.
        ``share``: one of ``SHARE_MODES``."""
        folder = Path(folder)
        backend = canonical_name(backend)
        manifest = read_manifest(folder, check_files=check_files)
        _kv_dtype(folder, manifest)  # refuse before opening a session
        in_place = (manifest.get("kv") or {}).get("layout", "concat") == "in-place"
        if in_place and (not get_backend(backend).onnx_step_graph or device != "cpu"):
            raise EngineError(f"engine {folder} was compiled with --kv in-place, whose KV buffers only the onnx backend on the CPU runs; "
                              "use --backend onnx --device cpu, or recompile with --kv concat")
        share = _share_mode(share, manifest, backend, device)
        weights = SharedWeights() if share == "weights" else None
        session = open_session(folder, manifest, backend, device, threads, weights=weights, shared_arena=share != "off")
        if in_place:
            # run(...) keeps the concat contract; step(...) updates KVBuffers in place
            session = InPlaceSession(session, rows_apart=(manifest.get("attention") or {}).get("op") == "GroupQueryAttention",
                                     scales=_kv_scales(folder, manifest))
        tokenizer = None
        if manifest.get("tokenizer"):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(folder)
        engine = cls(folder, manifest, session, tokenizer, device)
        engine.threads = threads
        engine.backend = backend
        engine.share, engine.weights = share, weights
        return engine

    def new_cache(self, batch: int) -> KVCache:
        g = self.geometry
        return KVCache.empty(g.num_layers, batch, g.num_kv_heads, g.head_dim, self.kv_dtype, keyless=self.keyless_layers)

    @property
    def kv_in_place(self) -> bool:
        """The step graph updates :class:`KVBuffers` in place (``--kv in-place``)."""
        return self.kv_layout == "in-place"

    @property
    def aligned_rows(self) -> bool:
        """A batch may hold its rows *left-aligned* in the KV buffers (each row's positions from index
        0, its mask's ones on them and zeros after): the in-place step graph writes each row's new
        positions after its own keys (``kv_in_place``'s per-row write index; GroupQueryAttention attends
        to those keys only), so every row computes exactly as alone (``attention.aligned_rows`` in the
        manifest). Otherwise rows are left-padded to a common end."""
        return self.kv_in_place and bool((self.manifest.get("attention") or {}).get("aligned_rows"))

    def buffers_for(self, cache: KVCache | None, total: int, exact: bool = False) -> KVBuffers:
        """In-place engines: :class:`KVBuffers` holding ``cache`` (one copy; an empty cache of one row
        when None) with room for ``total`` positions, rounded up to the growth chunk unless ``exact``."""
        if not self.kv_in_place:
            raise EngineError(f"engine {self.folder} has the concat KV layout; it takes a KVCache (KV buffers need `steerc compile --kv in-place`)")
        cache = cache if cache is not None else self.new_cache(1)
        cache.check_layout(self.keyless_layers, f"engine {self.folder}")
        self._check_cache_geometry(cache.values[0].shape[1], cache.values[0].shape[3], cache.values[0].dtype)
        return KVBuffers.from_cache(cache, total if exact else round_capacity(total, self.kv_chunk, self.max_seq_len), self.kv_chunk, self.session.scales)

    def _check_cache_geometry(self, kv_heads: int, head_dim: int, dtype) -> None:
        g = self.geometry
        if (kv_heads, head_dim, np.dtype(dtype)) != (g.num_kv_heads, g.head_dim, np.dtype(self.kv_dtype)):
            raise EngineError(f"KV cache of {kv_heads} kv heads x {head_dim} ({np.dtype(dtype)}) does not fit engine {self.folder} "
                              f"({g.num_kv_heads} kv heads x {g.head_dim}, {np.dtype(self.kv_dtype)})")

    def check_length(self, total: int, what: str = "the request") -> None:
        if total > self.max_seq_len:
            raise ContextTooLongError(
                f"{what} needs {total} positions but this engine allows at most {self.max_seq_len}; "
                "shorten it, or recompile with a larger --max-seq-len"
            )

    def _check_step(self, input_ids, attention_mask, bias, batch: int, length: int) -> None:
        B, S = input_ids.shape
        total = length + S
        if B != batch or attention_mask.shape != (B, total) or bias.shape != (B, self.geometry.num_layers, self.geometry.num_heads, total):
            raise ValueError(f"inconsistent step shapes: ids {input_ids.shape}, mask {attention_mask.shape}, bias {bias.shape}, "
                             f"cache of {batch} rows and length {length}")

    def _feed(self, input_ids, position_ids, attention_mask, cache: KVCache, bias) -> dict:
        """The graph inputs of one step, after checking the shapes agree."""
        if isinstance(cache, KVBuffers):
            raise EngineError("this call takes a KVCache, not KV buffers: convert them with buffers.to_cache()")
        cache.check_layout(self.keyless_layers, f"engine {self.folder}")
        self._check_step(input_ids, attention_mask, bias, cache.batch, cache.length)
        return dict(zip(self.input_names, (input_ids, position_ids, attention_mask, *cache.flat(), bias)))

    @property
    def last_logits(self) -> bool:
        """The step graph returns the last position's logits only (``--logits last``; the manifest's ``logits``)."""
        return (self.manifest.get("logits") or {}).get("positions") == "last"

    def forward(self, input_ids: np.ndarray, position_ids: np.ndarray, attention_mask: np.ndarray, cache: KVCache | KVBuffers,
                bias: np.ndarray) -> tuple[np.ndarray, KVCache | KVBuffers]:
        """One engine call: ``input_ids [B,S]``, ``attention_mask [B,P+S]``, ``bias [B,L,H,P+S]``
        -> ``(logits [B,S,V], cache extended by S positions)``; ``logits [B,1,V]`` (the last position) on
        an engine compiled with ``--logits last``, the default (:attr:`last_logits`). A :class:`KVCache` is not
        modified (a new one is returned); :class:`KVBuffers` (in-place engines) are updated in
        place, growing if full, and returned."""
        if isinstance(cache, KVBuffers):
            return self._forward_in_place(input_ids, position_ids, attention_mask, cache, bias), cache
        feed = self._feed(input_ids, position_ids, attention_mask, cache, bias)
        with self.gate:
            logits, *present = self.session.run(self.output_names, feed)
        return logits, KVCache.from_flat(present, self.keyless_layers)

    def _forward_in_place(self, input_ids, position_ids, attention_mask, buffers: KVBuffers, bias) -> np.ndarray:
        """:meth:`forward` on KV buffers: the new positions are written into them."""
        if not self.kv_in_place:
            raise EngineError(f"engine {self.folder} has the concat KV layout and takes a KVCache; "
                              "convert the buffers with buffers.to_cache(), or compile the engine with --kv in-place")
        if len(buffers.arrays) != 2 * self.geometry.num_layers:
            raise EngineError(f"KV buffers of {buffers.num_layers} layers do not fit engine {self.folder} ({self.geometry.num_layers} layers)")
        _, H, _, D = buffers.arrays[0].shape
        self._check_cache_geometry(H, D, buffers.dtype)
        if (buffers.scales is None) != (self.session.scales is None):
            raise EngineError(f"engine {self.folder} keeps {'an int8' if self.session.scales is not None else 'a float'} KV cache; these buffers are "
                              f"{'int8' if buffers.scales is not None else 'float'}: make them with engine.buffers_for(cache, total)")
        self._check_step(input_ids, attention_mask, bias, buffers.batch, buffers.length)
        total = buffers.length + input_ids.shape[1]
        self.check_length(total)
        buffers.reserve(total, limit=self.max_seq_len)
        ids_name, positions_name, mask_name = self.input_names[:3]
        inputs = {ids_name: np.asarray(input_ids, np.int64), positions_name: np.asarray(position_ids, np.int64),
                  mask_name: np.asarray(attention_mask, np.int64), self.input_names[-1]: np.asarray(bias, np.float32)}
        with self.gate:
            return self.session.step(inputs, buffers)


    def _analysis_device(self) -> str:
        """A compiled backend on CUDA keeps the analysis graph on ONNX Runtime's CPU provider
        unless onnxruntime-gpu is installed (it is optional; the step graph is what runs per token)."""
        if get_backend(self.backend).onnx_step_graph or self.device == "cpu":
            return self.device
        import onnxruntime

        return "cuda" if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else "cpu"

    def analyze(self, input_ids: np.ndarray, position_ids: np.ndarray, attention_mask: np.ndarray, cache: KVCache, bias: np.ndarray,
                queries: bool = False):
        """:meth:`forward` on the analysis graph: also returns ``attn_importance [B, L, H, P+S]``,
        the attention each key received, summed over this call's real query rows, and with
        ``queries`` ``attn_queries [B, L, H, D]``, each layer's query vectors summed over them."""
        if not self.has_analysis:
            raise EngineError(f"engine {self.folder} has no analysis graph (compiled with --no-importance); recompile without it to use LLMSteer selection")
        if queries and not self.has_queries:
            raise EngineError(f"engine {self.folder} was compiled before its analysis graph output query vectors (attn_queries), which qllm "
                              "block retrieval scores blocks with; recompile it with this steerc (`steerc compile ... --force`)")
        with self._analysis_lock:
            if self._analysis is None:
                self._analysis = self._side_session(self.manifest["analysis"]["model"])
        if isinstance(cache, KVBuffers):  # the analysis graph keeps the concat layout
            cache = cache.to_cache()
        feed = self._feed(input_ids, position_ids, attention_mask, cache, bias)
        if queries:
            with self.gate:
                logits, *present, importance, query_sums = self._analysis.run([*self.output_names, "attn_importance", "attn_queries"], feed)
            return logits, KVCache.from_flat(present, self.keyless_layers), importance, query_sums
        with self.gate:
            logits, *present, importance = self._analysis.run([*self.output_names, "attn_importance"], feed)
        return logits, KVCache.from_flat(present, self.keyless_layers), importance

    def select_scores(self, input_ids: np.ndarray, position_ids: np.ndarray, attention_mask: np.ndarray, cache: KVCache) -> np.ndarray:
        """``selector_scores [B, n, H, P+S]`` (the ``n`` layers of :attr:`selector_score_layers`) of the
        selector graph: what :meth:`analyze` returns as ``attn_importance[:, selector_score_layers]``
        on an unsteered call (zero bias), without
        the later layers, the logits or the KV (the cache is not extended). The inputs of :meth:`forward`
        but the bias."""
        if not self.selector_layers:
            raise EngineError(f"engine {self.folder} has no selector graph (compiled before steerc derived one, or without an analysis graph); "
                              "use analyze(), or recompile it with this steerc (`steerc compile ... --force`)")
        with self._analysis_lock:
            if self._selector is None:
                session = self._side_session(self.manifest["selector"]["model"])
                self._selector = session, {i.name for i in session.get_inputs()}
        session, wanted = self._selector
        if isinstance(cache, KVBuffers):  # the selector graph keeps the concat layout
            cache = cache.to_cache()
        B, S = input_ids.shape
        bias = np.zeros((B, self.geometry.num_layers, self.geometry.num_heads, cache.length + S), np.float32)  # [B, L, H, P+S], fed only where the graph kept it
        feed = self._feed(input_ids, position_ids, attention_mask, cache, bias)
        with self.gate:
            return session.run(["selector_scores"], {name: value for name, value in feed.items() if name in wanted})[0]

    def _side_session(self, model: str):
        """A session over one of the engine's other ONNX graphs (analysis, selector): ONNX Runtime whatever the backend."""
        return create_session(self.folder / model, device=self._analysis_device(), threads=self.threads, weights=self.weights,
                              shared_arena=self.share != "off")


def open_session(folder: Path, manifest: dict, backend: str, device: str, threads: int | None, weights: SharedWeights | None = None,
                 shared_arena: bool = False):
    """The step session of ``backend`` (:meth:`steerc.backends.base.Backend.open_session`); each
    one has ONNX Runtime's ``run(output_names, feed)``."""
    return get_backend(backend).open_session(folder, manifest, device, threads, weights=weights, shared_arena=shared_arena)


def _share_mode(share: str | None, manifest: dict, backend: str, device: str) -> str:
    """``share`` (or $STEERC_SHARE, or "arena") checked; "weights" falls back to "arena" where
    one copy cannot help: a step graph not on ONNX Runtime's CPU provider, or MatMulNBits weights."""
    share = share or os.environ.get("STEERC_SHARE") or "arena"
    if share not in SHARE_MODES:
        raise ValueError(f"share must be one of {SHARE_MODES}, got {share!r}")
    packed = [op for op in PREPACK_ONLY_OPS if op in manifest["backend"].get("op_counts", {})]
    if share == "weights" and (not get_backend(backend).onnx_step_graph or device != "cpu" or packed):
        why = f"its {packed[0]} weights must be pre-packed per session" if packed else f"the step graph runs on {backend} / {device}"
        log.warning("share 'weights' falls back to 'arena': %s", why)
        share = "arena"
    return share


def _kv_scales(folder: Path, manifest: dict) -> list[np.ndarray] | None:
    """An int8 KV cache's scales (``--kv-cache int8``), None for a float cache."""
    if (manifest.get("kv_cache") or {}).get("dtype") != "int8":
        return None
    from steerc.passes.onnx.quantize_kv_cache import load_kv_scales

    return load_kv_scales(folder, manifest["geometry"]["num_layers"])


def _kv_dtype(folder: Path, manifest: dict):
    """The numpy dtype the runtime feeds the KV cache in (float32 for an int8 cache, which its
    buffers hold quantized); bf16 engines have none (numpy has no bfloat16, and ONNX Runtime's CPU
    provider has no bf16 kernels)."""
    if (manifest.get("kv_cache") or {}).get("dtype") == "int8":
        return np.float32
    kv_dtype = manifest["inputs"][3]["dtype"]
    if kv_dtype not in _NP_DTYPES:
        raise EngineError(
            f"engine {folder} is {manifest['dtype']}, which ONNX Runtime's CPU provider cannot run and this runtime cannot feed "
            f"(KV dtype {kv_dtype}); compile with --dtype fp32 or fp16"
        )
    return _NP_DTYPES[kv_dtype]


def _eos_ids(folder: Path) -> set[int]:
    ids: set[int] = set()
    for name in ("generation_config.json", "config.json"):
        path = folder / name
        if path.is_file():
            value = json.loads(path.read_text()).get("eos_token_id")
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, list):
                ids.update(int(v) for v in value)
    return ids
