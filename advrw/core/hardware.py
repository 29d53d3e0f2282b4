"""What this machine runs fast: a capability probe and the runtime settings resolved from it.

``precision=auto`` picks bf16 autocast only where the hardware has native bf16 (a CUDA device
with ``torch.cuda.is_bf16_supported()``; a CPU with AVX512-BF16 or AMX-BF16) and fp32 elsewhere:
on an AVX2-only CPU bf16 autocast is emulated and about 20x slower. ``channels_last=auto`` turns
the layout on only for the (model family, device type, precision) cells where it measured
faster (``CHANNELS_LAST_FASTER``). ``compile=true`` runs the training step's forwards (loss and
attack) through ``torch.compile``; the eager module is kept for checkpoints.

Test hook: ``ADVRW_FAKE_CAPABILITY=<preset>`` (one of ``FAKE_PRESETS``) makes :func:`probe`
report that machine instead of this one; the record says it was faked.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from advrw.core.errors import AdvrwError
from advrw.core.files import write_json

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")
CHANNELS_LAST = ("auto", True, False)
FAKE_ENV = "ADVRW_FAKE_CAPABILITY"

# The cost quoted when bf16 is forced on hardware without it (issue 9): PreActResNet-18 attack
# forward+backward at batch 32 on a 2-core AMD EPYC with AVX2 only, torch 2.13 CPU:
# 2.0 img/s under bf16 autocast vs 41-48 img/s in fp32.
SLOW_BF16_COST = ("about 20x slower than fp32 (attack forward+backward of PreActResNet-18, batch 32: "
                  "2.0 vs 41-48 img/s, measured on a 2-core AVX2-only AMD EPYC, torch 2.13)")

# channels_last=auto: (model family, device type, resolved precision) -> True (on for that device
# type) or the CPU capabilities it was measured faster on. Anything else (every GPU) stays off
# until measured. Source: scripts/bench.py (advrw train step, AT, images/s) on a 2-core AMD EPYC
# with AVX512-BF16, torch 2.13.0 CPU, README "Speed": batch 128, PreActResNet-18 PGD-10 bf16 13.2
# -> bf16+cl 15.0, SmallCNN PGD-40 bf16 110.3 -> bf16+cl 138.0; --quick (batch 32, 6 steps, idle
# machine), fp32 -> fp32+cl: PreActResNet-18 13.9 -> 15.9, SmallCNN 465-481 -> 582-616. fp32 was
# only measured on that AVX512 CPU, so an AVX2-only CPU keeps the default layout.
CHANNELS_LAST_FASTER = {
    ("resnet", "cpu", "bf16"): True,
    ("smallcnn", "cpu", "bf16"): True,
    ("resnet", "cpu", "fp32"): ("AVX512",),
    ("smallcnn", "cpu", "fp32"): ("AVX512",),
}


def channels_last_faster(family: str, cap: "Capability", precision: str) -> bool:
    cell = CHANNELS_LAST_FASTER.get((family, cap.device_type, precision), False)
    return cell if isinstance(cell, bool) else cap.cpu_capability in cell


def model_family(name: str) -> str:
    if "resnet" in name or name.startswith("wrn"):
        return "resnet"  # ResNet-18/50, PreActResNet-18, WideResNets: the same conv/BN blocks
    return name


@dataclass(frozen=True)
class Capability:
    """The facts a runtime choice rests on; ``record()`` is what run_info/results store."""

    device_type: str = "cpu"
    cpu_capability: str = "DEFAULT"  # torch.backends.cpu.get_cpu_capability()
    cpu_flags: tuple[str, ...] = ()  # the bf16-relevant /proc/cpuinfo flags present
    cpu_model: str | None = None
    gpu_name: str | None = None
    cuda_bf16: bool = False
    tf32_matmul: bool | None = None
    tf32_cudnn: bool | None = None
    source: str = "probed"

    @property
    def native_bf16(self) -> bool:
        if self.device_type == "cuda":
            return self.cuda_bf16
        return "avx512_bf16" in self.cpu_flags or "amx_bf16" in self.cpu_flags

    def missing_bf16(self) -> str:
        """Why bf16 is not native here, in words."""
        if self.device_type == "cuda":
            return f"GPU {self.gpu_name} has no native bf16 (torch.cuda.is_bf16_supported() is False)"
        return f"CPU capability {self.cpu_capability} without avx512_bf16 or amx_bf16 (/proc/cpuinfo flags)"

    def record(self) -> dict:
        rec = {"device_type": self.device_type, "cpu_capability": self.cpu_capability,
               "cpu_bf16_flags": list(self.cpu_flags), "cpu_model": self.cpu_model, "native_bf16": self.native_bf16,
               "capability_source": self.source}
        if self.device_type == "cuda":
            rec.update({"gpu_name": self.gpu_name, "cuda_bf16": self.cuda_bf16, "tf32_matmul": self.tf32_matmul,
                        "tf32_cudnn": self.tf32_cudnn})
        return rec


FAKE_PRESETS = {
    "avx2": Capability("cpu", "AVX2", (), "fake AVX2-only CPU"),
    "avx512": Capability("cpu", "AVX512", (), "fake AVX512 CPU without bf16"),
    "avx512_bf16": Capability("cpu", "AVX512", ("avx512_bf16",), "fake AVX512-BF16 CPU"),
    "amx": Capability("cpu", "AVX512", ("amx_bf16",), "fake AMX CPU"),
    "cuda_bf16": Capability("cuda", "AVX2", (), None, "fake bf16 GPU", True, False, True),
    "cuda_no_bf16": Capability("cuda", "AVX2", (), None, "fake pre-Ampere GPU", False, False, True),
}


def _cpu_info() -> tuple[tuple[str, ...], str | None]:
    flags, model = set(), None
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: fall back to torch's own check below
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "flags" and not flags:
            flags = set(value.split())
        elif key == "model name" and model is None:
            model = value.strip()
    found = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    if not text:
        try:  # torch's cpuinfo-based checks (private, hence guarded)
            if torch.cpu._is_avx512_bf16_supported():
                found.append("avx512_bf16")
            if torch.cpu._is_amx_tile_supported():
                found.append("amx_bf16")
        except AttributeError:
            pass
    return tuple(found), model


def probe(device: torch.device | str = "cpu") -> Capability:
    """This machine's capability for ``device`` (or the ``ADVRW_FAKE_CAPABILITY`` preset)."""
    fake = os.environ.get(FAKE_ENV)
    if fake:
        if fake not in FAKE_PRESETS:
            raise AdvrwError(f"{FAKE_ENV}={fake!r} is unknown: choose one of {', '.join(FAKE_PRESETS)}")
        return replace(FAKE_PRESETS[fake], source=f"{FAKE_ENV}={fake} (test hook, not this machine)")
    device = torch.device(device)
    flags, model = _cpu_info()
    cap = Capability("cpu", torch.backends.cpu.get_cpu_capability(), flags, model)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        cap = replace(cap, device_type="cuda", gpu_name=torch.cuda.get_device_name(index),
                      cuda_bf16=bool(torch.cuda.is_bf16_supported()),
                      tf32_matmul=bool(torch.backends.cuda.matmul.allow_tf32),
                      tf32_cudnn=bool(torch.backends.cudnn.allow_tf32))
    return cap


@dataclass(frozen=True)
class Runtime:
    precision: str  # resolved: fp32 | bf16
    channels_last: bool
    compile: bool
    capability: Capability
    requested: dict = field(default_factory=dict)
    why: dict = field(default_factory=dict)

    @property
    def amp_dtype(self):
        return torch.bfloat16 if self.precision == "bf16" else None

    def record(self) -> dict:
        return {"precision": self.precision, "channels_last": self.channels_last, "compile": self.compile,
                "requested": dict(self.requested), "why": dict(self.why), **self.capability.record()}


def _get(cfg, key, default=None):
    node = cfg
    for part in key.split("."):
        if node is None:
            return default
        node = node.get(part) if hasattr(node, "get") else getattr(node, part, None)
    return default if node is None else node


def validate_runtime(cfg) -> None:
    """One-line errors for precision / channels_last / compile (called from config.validate_train)."""
    p = _get(cfg, "precision", "fp32")
    if p not in PRECISIONS:
        raise AdvrwError(f"precision={p!r} is unknown: choose auto, fp32 or bf16")
    cl = _get(cfg, "channels_last", False)
    if cl not in CHANNELS_LAST or isinstance(cl, int) and not isinstance(cl, bool):
        raise AdvrwError(f"channels_last={cl!r} is invalid: choose auto, true or false")
    c = _get(cfg, "compile", False)
    if not isinstance(c, bool):
        raise AdvrwError(f"compile={c!r} is invalid: choose true or false")


def resolve_runtime(cfg, device: torch.device | str, probe_fn=None, warn: bool = True) -> Runtime:
    """Resolve ``precision``/``channels_last``/``compile`` from ``cfg`` (a DictConfig or dict with
    those keys and ``model.name``) for ``device``; ``probe_fn`` replaces :func:`probe` in tests.

    An explicit ``precision=bf16`` without native bf16 is honoured, with one warning line.
    """
    validate_runtime(cfg)
    device = torch.device(device)
    cap = (probe_fn or probe)(device)
    req = {"precision": _get(cfg, "precision", "fp32"), "channels_last": _get(cfg, "channels_last", False),
           "compile": bool(_get(cfg, "compile", False))}
    why = {}
    if req["precision"] == "auto":
        precision = "bf16" if cap.native_bf16 else "fp32"
        why["precision"] = ("native bf16" if cap.native_bf16 else "no native bf16: " + cap.missing_bf16())
    else:
        precision = req["precision"]
        why["precision"] = "requested"
        if precision == "bf16" and not cap.native_bf16 and warn:
            log.warning("precision=bf16 without native bf16: %s; expect %s. Use precision=auto (fp32 here).",
                        cap.missing_bf16(), SLOW_BF16_COST)
    family = model_family(str(_get(cfg, "model.name", "")))
    if req["channels_last"] == "auto":
        channels_last = channels_last_faster(family, cap, precision)
        why["channels_last"] = (f"measured faster for {family} on {cap.device_type} in {precision}" if channels_last
                                else f"not measured faster for {family} on {cap.device_type} in {precision}")
    else:
        channels_last = bool(req["channels_last"])
        why["channels_last"] = "requested"
    return Runtime(precision, channels_last, req["compile"], cap, req, why)


def compile_model(model: torch.nn.Module, runtime: Runtime) -> torch.nn.Module:
    """The module the training step calls: ``torch.compile(model)`` when asked, else ``model``.

    The compiled wrapper shares parameters and buffers with ``model``, so optimiser state and
    ``model.state_dict()`` (no ``_orig_mod.`` prefix) stay those of the eager module.
    """
    if not runtime.compile:
        return model
    return torch.compile(model)


def compile_seconds() -> float | None:
    """Seconds torch.compile has spent so far in this process (dynamo + inductor, fwd and bwd)."""
    try:
        from torch._dynamo.utils import compilation_time_metrics as m  # private: guarded
    except ImportError:
        return None
    keys = [k for k in m if k == "_compile.compile_inner" or k.endswith("bw_compiler")]
    return round(sum(sum(m[k]) for k in keys), 3) if keys else None


def report_compile(info: dict, path: Path, t_first_epoch: float) -> None:
    """Log the compile time once and add it to run_info.json (after the first compiled epoch)."""
    sec = compile_seconds()
    info.setdefault("runtime", {})["compile_time_s"] = sec
    info["runtime"]["first_epoch_s"] = round(t_first_epoch, 3)
    write_json(path, info)
    log.info("torch.compile: %s s compiling (inside a first epoch of %.1f s)",
             "?" if sec is None else f"{sec:.1f}", t_first_epoch)


def eval_runtime(device, model_channels_last: bool = False) -> dict:
    """What an evaluation runs with: fp32 (eval never autocasts), eager, and this machine's facts."""
    cap = probe(device)
    return {"precision": "fp32", "channels_last": bool(model_channels_last), "compile": False, **cap.record()}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise AdvrwError(f"device={name!r} is invalid: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise AdvrwError(f"device={name!r} is not available here: no CUDA device; use device=cpu or auto")
    return device


def seed_everything(seed: int, deterministic: bool) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True
