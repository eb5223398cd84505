"""The fused engine: MobileNetV1 / V2 classifiers run by ``fused_engine.cpp`` (fp32, AVX2 + FMA, CPU only).

``FusedEngine(model)`` folds BatchNorm, packs the weights for the C++ kernels and runs NCHW batches; its logits
equal the eager model's within float rounding (``tests/test_fused.py``: ≤ 1e-4). What it does that a graph
runtime does not (V2 §5.1's hardware argument): inverted residual blocks on wide maps never materialise their
expansion — each thread streams its rows through a ring of three expanded rows and projects every depthwise
output row at once — and the whole network runs in one parallel region with a spin barrier per block.

The library is compiled on first use with the system C++ compiler (``$CXX``, default ``g++``) into
``$MOBILENETS_CACHE`` (default ``~/.cache/mobilenets``), keyed by the source's hash; ``EngineUnavailable``
says why when it cannot be (no compiler, no AVX2/FMA, not x86-64).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

import torch
from torch import nn

from mobilenets.deploy.fold import fold_batchnorm
from mobilenets.errors import ConfigError, MobilenetsError
from mobilenets.models.blocks import DepthwiseSeparable, InvertedResidual
from mobilenets.models.layers import ConvBNAct
from mobilenets.models.mobilenet import MobileNet, check_image_batch

SOURCE = Path(__file__).with_name("fused_engine.cpp")
_STEM, _BLOCK, _POINTWISE, _POOL_FC = 1, 2, 3, 4
_ACTS = {"linear": 0, "relu": 1, "relu6": 2}


class EngineUnavailable(MobilenetsError):
    """The fused engine cannot run on this machine (no C++ compiler, no AVX2/FMA, not x86-64)."""


class _Layer(ctypes.Structure):
    # Mirrors ``struct Layer`` in fused_engine.cpp field by field.
    _fields_ = [
        *[(n, ctypes.c_int32) for n in ("kind", "cin", "cmid", "cout", "stride", "act_mid", "act_out")],
        *[(n, ctypes.c_int32) for n in ("has_expand", "residual", "stem_in_chans")],
        *[(n, ctypes.c_void_p) for n in ("w_expand", "b_expand", "w_dw", "b_dw", "w_out", "b_out")],
    ]


def cpu_supported() -> str | None:
    """None if this CPU can run the engine, else why not."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"the fused engine needs an x86-64 CPU, not {platform.machine()}"
    capability = torch.backends.cpu.get_cpu_capability()  # "AVX2" means AVX2 and FMA
    if capability not in ("AVX2", "AVX512"):
        return f"the fused engine needs AVX2 and FMA (this CPU: {capability})"
    return None


@cache
def load_library() -> ctypes.CDLL:
    """Compile (once per source version) and load the engine's shared library."""
    reason = cpu_supported()
    if reason:
        raise EngineUnavailable(reason)
    source = SOURCE.read_bytes()
    cxx = os.environ.get("CXX", "g++")
    flags = ["-O3", "-mavx2", "-mfma", "-std=c++17", "-shared", "-fPIC", "-pthread", "-fno-math-errno"]
    key = hashlib.sha256(source + " ".join([cxx, *flags]).encode()).hexdigest()[:16]
    cache_dir = Path(os.environ.get("MOBILENETS_CACHE", Path.home() / ".cache" / "mobilenets"))
    target = cache_dir / f"fused_engine-{key}.so"
    if not target.exists():
        if shutil.which(cxx) is None:
            raise EngineUnavailable(f"the fused engine is compiled on first use and needs a C++ compiler ({cxx!r})")
        cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
            built = Path(tmp) / target.name
            result = subprocess.run(
                [cxx, *flags, str(SOURCE), "-o", str(built)], capture_output=True, text=True, check=False
            )
            if result.returncode != 0:
                raise EngineUnavailable(f"compiling {SOURCE.name} failed:\n{result.stderr.strip()[-2000:]}")
            os.replace(built, target)  # atomic: a concurrent process sees the whole library or none
    lib = ctypes.CDLL(str(target))
    lib.mn_scratch_floats.restype = ctypes.c_int64
    lib.mn_scratch_floats.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.mn_run.restype = ctypes.c_int
    lib.mn_run.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, *[ctypes.c_int] * 4, ctypes.c_void_p]
    lib.mn_run.argtypes += [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
    return lib


def pack_panels(weight_kn: torch.Tensor) -> torch.Tensor:
    """A K × N weight matrix as the GEMM kernel reads it: panels of 16 columns (the last may be 8), each K-major."""
    k, n = weight_kn.shape
    if n % 8:
        weight_kn = torch.cat([weight_kn, weight_kn.new_zeros(k, 8 - n % 8)], 1)
        n = weight_kn.shape[1]
    return torch.cat([weight_kn[:, col : col + 16].reshape(-1) for col in range(0, n, 16)]).contiguous()


def _pad8(v: torch.Tensor) -> torch.Tensor:
    return torch.cat([v, v.new_zeros(-len(v) % 8)]).contiguous()


def _conv_weights(unit: ConvBNAct) -> tuple[torch.Tensor, torch.Tensor]:
    conv = unit.conv
    bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels)
    return conv.weight.detach().float(), bias.detach().float()


def _pointwise(unit: ConvBNAct) -> tuple[torch.Tensor, torch.Tensor]:
    w, b = _conv_weights(unit)
    return pack_panels(w.flatten(1).t()), _pad8(b)


def _depthwise(unit: ConvBNAct) -> tuple[torch.Tensor, torch.Tensor]:
    w, b = _conv_weights(unit)
    return w.reshape(w.shape[0], 9).t().contiguous(), _pad8(b)


def _check_supported(model: MobileNet) -> None:
    config, spec = model.config, model.spec
    problems = []
    if config.arch not in ("v1", "v2"):
        problems.append(f"architecture {config.arch} (V3's squeeze-excite and h-swish are not implemented)")
    if config.padding != "symmetric":
        problems.append("TensorFlow 'same' padding")
    if config.output_stride != 32:
        problems.append(f"output stride {config.output_stride} (dilated convolutions)")
    for i, b in enumerate(spec.blocks):
        if b.kernel != 3 or b.dilation != 1 or b.se_channels or b.stride not in (1, 2):
            problems.append(f"block {i}: only 3×3 depthwise, stride 1 or 2, no dilation or squeeze-excite")
        if b.has_residual and b.shortcut == "expansion":
            problems.append(f"block {i}: the 'expansion' shortcut ablation")
        if {b.act, b.project_act} - set(_ACTS):
            problems.append(f"block {i}: activation {b.act}/{b.project_act}")
        if any(c % 8 for c in (b.in_channels, b.mid_channels, b.out_channels)):
            problems.append(f"block {i}: channels not multiples of 8")
    if spec.stem_act not in _ACTS or (spec.head_channels and spec.head_act not in _ACTS):
        problems.append("stem/head activation")
    if spec.stem_channels % 8 or spec.head_channels % 8 or model.pre_logits is not None:
        problems.append("stem/head channels not multiples of 8, or a pre-logits layer")
    if problems:
        raise ConfigError("the fused engine cannot run this model: " + "; ".join(problems))


def _program(model: MobileNet) -> tuple[list[_Layer], list[torch.Tensor]]:
    """The engine's layer list for a BN-folded ``model``, and the tensors its pointers refer to (keep alive)."""
    keep: list[torch.Tensor] = []

    def ptr(t: torch.Tensor | None) -> int | None:
        if t is None:
            return None
        keep.append(t)
        return t.data_ptr()

    layers: list[_Layer] = []
    w, b = _conv_weights(model.stem)
    stem_in = w.shape[1]
    stem_w = pack_panels(w.permute(2, 3, 1, 0).reshape(9 * stem_in, -1))  # rows in (ky, kx, ci) order
    layers.append(
        _Layer(kind=_STEM, cin=9 * stem_in, cout=w.shape[0], stride=2, act_out=_ACTS[model.spec.stem_act],
               stem_in_chans=stem_in, w_out=ptr(stem_w), b_out=ptr(_pad8(b)))
    )  # fmt: skip
    for block in model.blocks:
        spec = block.spec
        layer = _Layer(kind=_BLOCK, cin=spec.in_channels, cmid=spec.mid_channels, cout=spec.out_channels,
                       stride=spec.stride, act_mid=_ACTS[spec.act])  # fmt: skip
        if isinstance(block, DepthwiseSeparable):
            out_unit, layer.act_out = block.pointwise, _ACTS[spec.act]
        elif isinstance(block, InvertedResidual):
            out_unit, layer.act_out = block.project, _ACTS[spec.project_act]
            layer.residual = int(block.bottleneck_shortcut)
            if block.expand is not None:
                we, be = _pointwise(block.expand)
                layer.has_expand, layer.w_expand, layer.b_expand = 1, ptr(we), ptr(be)
        else:
            raise ConfigError(f"the fused engine cannot run a {type(block).__name__}")
        wd, bd = _depthwise(block.depthwise)
        wo, bo = _pointwise(out_unit)
        layer.w_dw, layer.b_dw, layer.w_out, layer.b_out = ptr(wd), ptr(bd), ptr(wo), ptr(bo)
        layers.append(layer)
    features = model.spec.blocks[-1].out_channels
    if model.head is not None:
        wh, bh = _pointwise(model.head)
        features = model.spec.head_channels
        layers.append(_Layer(kind=_POINTWISE, cin=model.spec.blocks[-1].out_channels, cout=features,
                             act_out=_ACTS[model.spec.head_act], w_out=ptr(wh), b_out=ptr(bh)))  # fmt: skip
    fc = _Layer(kind=_POOL_FC, cin=features, cout=features)
    if isinstance(model.classifier, nn.Linear):
        weight = model.classifier.weight.detach().float()
        fc.cout, fc.w_out = weight.shape[0], ptr(pack_panels(weight.t()))
        fc.b_out = ptr(_pad8(model.classifier.bias.detach().float()))
    layers.append(fc)
    return layers, keep


class FusedEngine:
    """A MobileNetV1/V2 classifier (``MobileNet``, output stride 32) as the fused engine runs it.

    ``engine(x)`` takes an NCHW float batch (any batch size; the sides the model accepts) and returns the
    logits (or the pooled features when the model has no classifier). ``threads`` defaults to PyTorch's.
    Batches with at least ``threads`` images run one image per thread; smaller ones share every layer.
    """

    def __init__(self, model: nn.Module, threads: int | None = None) -> None:
        if not isinstance(model, MobileNet):
            raise ConfigError(f"the fused engine runs MobileNet classifiers, not {type(model).__name__}")
        _check_supported(model)
        self.lib = load_library()
        self.in_chans = model.config.in_chans
        self.threads = threads or torch.get_num_threads()
        layers, self._tensors = _program(fold_batchnorm(model))
        self._array = (_Layer * len(layers))(*layers)
        self._layers = ctypes.cast(self._array, ctypes.c_void_p)
        self.outputs = layers[-1].cout
        self._scratch: dict[tuple[int, int], torch.Tensor] = {}

    def _scratch_for(self, h: int, w: int) -> torch.Tensor:
        if (h, w) not in self._scratch:
            n = self.lib.mn_scratch_floats(self._layers, len(self._array), h, w, self.threads)
            self._scratch[(h, w)] = torch.empty(int(n), dtype=torch.float32)
        return self._scratch[(h, w)]

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        check_image_batch(x, self.in_chans)
        x = x.detach().to(torch.float32).contiguous()
        n, c, h, w = x.shape
        stride = (self.outputs + 7) // 8 * 8
        out = torch.empty(n, stride, dtype=torch.float32)
        status = self.lib.mn_run(
            self._layers, len(self._array), x.data_ptr(), n, c, h, w, out.data_ptr(), stride, self.threads,
            self._scratch_for(h, w).data_ptr(),
        )  # fmt: skip
        if status:
            raise MobilenetsError(f"the fused engine failed (status {status})")
        return out[:, : self.outputs]
