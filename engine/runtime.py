"""onnxruntime sessions for one exported model, run through IO binding so that tensors stay on the device.

Every graph call binds device-resident OrtValues (cache, cross K/V, masks) as they are and small host arrays
(token ids, positions, reorder, k) by copy; only outputs named as host outputs (the [rows x k] top-k) come back to
the host. On CPU the "device" is host memory and the same code path runs, which is what the tests exercise.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeAlias

import numpy as np
import onnxruntime as ort

from nmtserve.engine.cpu_budget import usable_cpus
from nmtserve.engine.int8_kernels import FedWeights, convert_columns, resolve_int8_kernels, session_source
from nmtserve.engine.model_dir import (
    APPEND_ROWS,
    DECODER_STEP,
    ENCODER,
    GATHER_ROWS,
    REORDER_CACHE,
    TRIM_CACHE,
    ModelInfo,
)
from nmtserve.engine.shortlist import Shortlist

log = logging.getLogger(__name__)

GRAPHS = (ENCODER, DECODER_STEP, GATHER_ROWS, APPEND_ROWS, TRIM_CACHE, REORDER_CACHE)
# onnxruntime's CPU SkipLayerNormalization kernel (the fusion of a residual Add and LayerNormalization) measured
# 6x slower than the two ops it replaces (77 vs 13 us for [64, 1, 256], onnxruntime 1.31): on CPU the fusion is
# turned off. On CUDA the fused kernel is the fast one and stays.
CPU_DISABLED_FUSIONS = ("SkipLayerNormFusion",)
Value: TypeAlias = ort.OrtValue | np.ndarray


class EngineError(RuntimeError):
    """The engine cannot be set up as asked (device, provider, model)."""


@dataclass(frozen=True)
class RuntimeConfig:
    device: str = "cpu"  # "cpu" or "cuda"
    device_id: int = 0
    threads: int | None = None  # CPU intra-op threads; None: the CPUs this process may use (quota too), at most 8
    spin: bool = True  # let idle ORT threads spin: lower latency, but burns CPU that a co-located job may want
    int8_kernels: str = "auto"  # int8 exports on CPU: u8s8, u8u8, u8s7 or auto (engine/int8_kernels.py)

    def intra_op_threads(self) -> int:
        if self.threads:
            return self.threads
        return min(8, usable_cpus())


def _providers(config: RuntimeConfig) -> list:
    if config.device == "cpu":
        return ["CPUExecutionProvider"]
    if config.device == "cuda":
        available = ort.get_available_providers()
        if "CUDAExecutionProvider" not in available:
            raise EngineError(
                "device='cuda' was requested but this onnxruntime has no CUDAExecutionProvider "
                f"(available: {', '.join(available)}); install onnxruntime-gpu (the 'gpu' extra) or use device='cpu'"
            )
        return [("CUDAExecutionProvider", {"device_id": config.device_id}), "CPUExecutionProvider"]
    raise EngineError(f"device must be 'cpu' or 'cuda', not {config.device!r}")


def _session_options(config: RuntimeConfig) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if config.device == "cpu":
        options.intra_op_num_threads = config.intra_op_threads()
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if config.spin else "0")
    options.log_severity_level = 3
    return options


def open_session(
    model: Path | str | bytes,
    config: RuntimeConfig,
    options: ort.SessionOptions | None = None,
    providers: list | None = None,
) -> ort.InferenceSession:
    """One graph's session as the engine runs it (``model``: its file, or a rewritten graph serialized;
    ``options``: e.g. ``_session_options(config)`` plus profiling)."""
    disabled = list(CPU_DISABLED_FUSIONS) if config.device == "cpu" else []
    return ort.InferenceSession(
        model if isinstance(model, bytes) else str(model),
        options or _session_options(config),
        providers=providers or _providers(config),
        disabled_optimizers=disabled,
    )


class Runtime:
    """The sessions of a model directory and a uniform ``run`` over IO binding."""

    def __init__(self, info: ModelInfo, config: RuntimeConfig) -> None:
        self.info, self.config = info, config
        if config.device == "cuda" and info.cache_layout == "ragged":
            raise EngineError(
                f"{info.directory}: a ragged export (cache_layout 'ragged') runs on CPU only for now; "
                "export without --ragged for CUDA"
            )
        providers = _providers(config)
        if config.device == "cuda" and info.precision == "int8":
            log.warning("int8 models use CPU-only quantized kernels; on CUDA prefer the fp16 export")
        if config.device == "cpu" and info.precision == "fp16":
            log.warning("fp16 models are meant for CUDA; on CPU prefer the fp32 or int8 export")
        options = _session_options(config)
        self.int8_kernels = _int8_kernels(info, config)
        sources = {name: session_source(info.path(name), self.int8_kernels) for name in GRAPHS}
        self.sessions = {name: open_session(model, config, options, providers) for name, (model, _) in sources.items()}
        self.outputs = {name: [o.name for o in s.get_outputs()] for name, s in self.sessions.items()}
        self.cache_dtype = np.dtype(info.cache_dtype)
        self.shortlist = _load_shortlist(info, sources[DECODER_STEP][1])  # the one graph with fed weights

    def upload(self, array: np.ndarray) -> ort.OrtValue:
        """A host array as an OrtValue on the device (on CPU it wraps the array without a copy)."""
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.config.device, self.config.device_id)

    def run(
        self,
        graph: str,
        inputs: Mapping[str, Value],
        host_outputs: Iterable[str] = (),
        bound_outputs: Mapping[str, ort.OrtValue] | None = None,
    ) -> dict[str, ort.OrtValue]:
        """Run ``graph``; outputs stay on the device except ``host_outputs`` (read them with ``.numpy()``), and
        ``bound_outputs`` are written into the values given (memory the caller owns, of the right shape)."""
        return Binding(self, graph).run(inputs, host_outputs, bound_outputs)


class Binding:
    """One graph's IO binding, kept across calls by one owner (a batch's decode step; not thread-safe).

    An input or output given as the very object bound by the previous call is not bound again: a step's cache,
    cross K/V, masks and row layout are mostly the same values step after step, and binding some 20 values cost
    about 40 us of a one-row step of 500 us. Host arrays are bound by reference (onnxruntime reads their memory at
    run time), so an array given again must not have been resized, only rewritten.
    """

    def __init__(self, runtime: Runtime, graph: str) -> None:
        self._runtime, self.graph = runtime, graph
        self._binding = runtime.sessions[graph].io_binding()
        # name -> the object bound to it, inputs and outputs apart (kept alive, so their ids are not reused)
        self._inputs: dict[str, object] = {}
        self._outputs: dict[str, ort.OrtValue] = {}

    def run(
        self,
        inputs: Mapping[str, Value],
        host_outputs: Iterable[str] = (),
        bound_outputs: Mapping[str, ort.OrtValue] | None = None,
    ) -> dict[str, ort.OrtValue]:
        """As ``Runtime.run``."""
        runtime, binding, last = self._runtime, self._binding, self._inputs
        for name, value in inputs.items():
            if last.get(name) is value:
                continue
            if isinstance(value, ort.OrtValue):
                binding.bind_ortvalue_input(name, value)
            else:
                value = np.ascontiguousarray(value)
                binding.bind_cpu_input(name, value)
            last[name] = value
        on_host, bound = set(host_outputs), bound_outputs or {}
        names = runtime.outputs[self.graph]
        for name in names:
            value = bound.get(name)
            if value is None:  # allocated by onnxruntime: bound afresh, so earlier results are never overwritten
                binding.bind_output(name, "cpu" if name in on_host else runtime.config.device, runtime.config.device_id)
                self._outputs.pop(name, None)
            elif self._outputs.get(name) is not value:
                binding.bind_ortvalue_output(name, value)
                self._outputs[name] = value
        runtime.sessions[self.graph].run_with_iobinding(binding)
        if len(bound) == len(names):  # nothing new to wrap (wrapping ~10 values costs ~70 us a step)
            return dict(bound)
        return dict(zip(names, binding.get_outputs(), strict=True))


def strip_prefix(outputs: dict[str, ort.OrtValue], prefix: str) -> dict[str, ort.OrtValue]:
    """Graph outputs named ``<prefix><input name>`` keyed by the input name they feed next time."""
    return {name.removeprefix(prefix): value for name, value in outputs.items() if name.startswith(prefix)}


def _int8_kernels(info: ModelInfo, config: RuntimeConfig) -> str:
    """The int8 format an int8 export runs in on CPU (other precisions and devices: as exported, u8s8)."""
    if info.precision != "int8" or config.device != "cpu":
        return "u8s8"
    try:
        kernels = resolve_int8_kernels(config.int8_kernels)
    except ValueError as error:
        raise EngineError(str(error)) from error
    if kernels in ("u8u8", "u8s7"):
        log.info("int8 weights rewritten for %s: exact where u8s8 kernels saturate 8-bit weights (no VNNI)", kernels)
    return kernels


def _load_shortlist(info: ModelInfo, fed: FedWeights) -> Shortlist | None:
    """The export's vocabulary shortlist (``export/shortlist.py``), or None for a full-vocabulary export
    (``fed``: the step graph's inputs rewritten for the int8 format, whose columns are converted to match)."""
    spec = info.manifest.get("shortlist")
    if spec is None:
        return None
    special = {info.pad_id, info.bos_id, info.eos_id, info.decoder_start_id, info.manifest["special_ids"]["unk"]}
    try:
        shortlist = Shortlist.load(info.directory, spec["inputs"], info.vocab_size, sorted(special))
        return replace(shortlist, columns=convert_columns(shortlist.columns, fed)) if fed else shortlist
    except (KeyError, ValueError, OSError) as error:
        raise EngineError(f"{info.directory}: the vocabulary shortlist cannot be read: {error}") from error
