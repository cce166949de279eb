"""Models from elsewhere: ``timm:<name>`` and ``tv:<name>`` model names, turned into the stem / stages / head contract.

``build_model("timm:resnet10t", num_classes)`` creates ``timm.create_model("resnet10t", pretrained=False,
num_classes=...)`` (keyword options pass through; random initialisation only, nothing is downloaded) and
``build_model("tv:mobilenet_v3_small", num_classes)`` creates ``torchvision.models.get_model(..., weights=None)``.
The library's module is then regrouped, without copying a weight, into :class:`LibraryBackbone` (a
:class:`~peerkd.models.base.Backbone`, so every method that taps stages or features works with it), or, where its
structure does not allow that, wrapped as :class:`LibraryClassifier` (logits only: the methods that need no more,
DML, KDCL, KD, PS-KD, Tf-KD, CS-KD, vanilla, train it; the others refuse it by name before training).

How a library model is regrouped (the readings, and where each comes from):

- **timm** (its own introspection, as ``timm.create_model(..., features_only=True)`` uses it): the stage ends are
  the modules of ``feature_info`` (``module``, ``num_chs``, ``reduction``); the taps timm lists at reduction 2
  (ResNet's ``act1``, MobileNetV3's ``bn1``, RegNet's ``stem``, EfficientNet's ``blocks.0``) end the stem, so the
  stages run at strides 4 .. 32 as in peerkd's ``tv_*`` ImageNet networks. Containers that hold a tap (``blocks``,
  ``stages``) are opened into their children. Modules after the last tap that ``forward_features`` still applies
  (EfficientNet's ``conv_head`` + ``bn2``, RegNet's ``final_conv``) join the last stage; the rest is the head:
  ``head.features`` is the model's own ``forward_head(x, pre_logits=True)`` and ``head.fc`` its ``get_classifier()``,
  so ``stage_channels[-1]`` is ``num_features`` and ``head.in_features`` the classifier's input width.
- **torchvision** (no ``feature_info``): the body is the model's children in order (``nn.Sequential`` children such
  as ``features`` or ``layer1`` opened one level), cut where the resolution halves (one probe forward): modules at
  stride <= 2 are the stem, each later stride a stage. The head is the global pool (the model's ``avgpool``, else a
  global average as its forward computes it), the classifier's layers before its last ``nn.Linear`` (MobileNetV3's
  hidden layer, dropout), and that last ``nn.Linear`` as ``head.fc``.

Either way the regrouping is a claim about the library's forward, so it is checked: one forward in eval mode on a
seeded random 64 x 64 image must give the library model's own logits (and, for timm, its ``forward_features``). A
model whose forward is not its children in order (a ViT adds position embeddings in code, DenseNet applies a ReLU in
``forward``), or whose classifier is not a ``Linear``, is a :class:`LibraryClassifier`, with the reason kept in
``structure_note`` for the refusal message.

Both classes give the network back in its library's terms: ``native_spec()`` is ``dict(library="timm" |
"torchvision", name=..., kwargs=...)`` and ``native_state_dict()`` has the library's own keys, so
``timm.create_model(name, **kwargs).load_state_dict(...)`` / ``torchvision.models.get_model(name, **kwargs)
.load_state_dict(...)`` restores the trained network without peerkd.
"""
from __future__ import annotations

import copy
import difflib
from collections import OrderedDict
from typing import Callable

import torch
from torch import nn

from peerkd.core.errors import ConfigError
from peerkd.models.base import Backbone

LIBRARIES = {"timm": "timm", "tv": "torchvision"}  # name prefix -> the library's name in native_spec()
PROBE_SIZE = 64  # pixels of the probe image: a stride-32 network keeps a 2 x 2 map (so a global pool shows)
STEM_MAX_REDUCTION = 2  # taps (or modules) at this stride or finer belong to the stem


class NotStaged(Exception):
    """The library model cannot be regrouped into stem / stages / head (the message says why)."""


def is_library_name(name) -> bool:
    return isinstance(name, str) and name.partition(":")[0] in LIBRARIES and ":" in name


# ------------------------------------------------------------------------------------------------ the adapters

class _NativeMixin:
    """``native_spec`` / ``native_state_dict``: the network in its library's own terms."""

    _spec: dict
    _key_map: list[tuple[str, str]]  # (peerkd prefix, native prefix), longest peerkd prefix first
    _native_version: int | None  # the library model class's state_dict version (torchvision's MNASNet checks it)

    def native_spec(self) -> dict:
        return copy.deepcopy(self._spec)

    def _native_key(self, key: str) -> str | None:
        for ours, theirs in self._key_map:
            if key.startswith(ours):
                return theirs + key[len(ours):]
        return None

    def native_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights with the library's keys (tensors shared with this module: clone before changing them), and
        the per-module version metadata ``load_state_dict`` hands to modules that check it."""
        state = self.state_dict()
        out: OrderedDict = OrderedDict()
        for key, value in state.items():
            native = self._native_key(key)
            if native is None:  # every key lies under a mapped prefix; anything else is a bug here, not the user's
                raise KeyError(f"{type(self).__name__}: no native key for '{key}'")
            out[native] = value
        metadata = OrderedDict()
        for path, meta in getattr(state, "_metadata", {}).items():
            native = self._native_key(path + ".")
            if native is not None:
                metadata[native[:-1]] = meta
        metadata[""] = {"version": self._native_version}
        out._metadata = metadata
        return out


class LibraryBackbone(_NativeMixin, Backbone):
    """A timm or torchvision classifier regrouped as ``stem -> stages -> head`` (its own modules, not copies)."""

    def __init__(self, stem: list[tuple[str, nn.Module]], stages: list[list[tuple[str, nn.Module]]],
                 head: nn.Module, head_keys: list[tuple[str, str]], stage_channels: list[int], spec: dict,
                 native_version: int | None = None):
        super().__init__()
        self.stem = _sequential(stem)
        self.stages = nn.ModuleList([_sequential(stage) for stage in stages])
        self.head = head
        self.stage_channels = list(stage_channels)
        self._spec = spec
        self._native_version = native_version
        body = [(f"stem.{_local(q)}.", f"{q}.") for q, _ in stem]
        body += [(f"stages.{i}.{_local(q)}.", f"{q}.") for i, stage in enumerate(stages) for q, _ in stage]
        self._key_map = sorted(body + head_keys, key=lambda pair: -len(pair[0]))


class LibraryClassifier(_NativeMixin, nn.Module):
    """A library classifier used as it is: logits only (``structure_note`` says why it has no stages)."""

    def __init__(self, model: nn.Module, spec: dict, structure_note: str):
        super().__init__()
        self.model = model
        self._spec = spec
        self._native_version = getattr(type(model), "_version", None)
        self._key_map = [("model.", "")]
        self.structure_note = structure_note

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class TimmHead(nn.Module):
    """timm's head: ``features`` is the model's ``forward_head(x, pre_logits=True)`` on a shell of the model that
    holds only the head's modules (the classifier moved out to ``fc``, an identity in its place)."""

    def __init__(self, shell: nn.Module, fc: nn.Linear):
        super().__init__()
        self.pooled = shell
        self.fc = fc
        self.in_features = fc.in_features

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pooled.forward_head(x, pre_logits=True)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))


class TorchvisionHead(nn.Module):
    """torchvision's head: global pool, the classifier's layers before its last ``Linear`` (``pre``, with the
    flatten at position ``flatten_at`` as the model's forward does it), then that ``Linear`` as ``fc``."""

    def __init__(self, pool: nn.Module, pre: list[nn.Module], fc: nn.Linear, flatten_at: int):
        super().__init__()
        self.pool = pool
        self.pre = nn.ModuleList(pre)
        self.fc = fc
        self.flatten_at = flatten_at
        self.in_features = fc.in_features

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(x)
        for i, layer in enumerate(self.pre):
            if i == self.flatten_at:
                x = torch.flatten(x, 1)
            x = layer(x)
        return torch.flatten(x, 1) if self.flatten_at >= len(self.pre) else x

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))


def _local(qualname: str) -> str:
    return qualname.replace(".", "_")  # module names inside an nn.Sequential cannot hold dots


def _sequential(modules: list[tuple[str, nn.Module]]) -> nn.Sequential:
    return nn.Sequential(OrderedDict((_local(q), m) for q, m in modules))


# ------------------------------------------------------------------------------------------------ building

def build_library_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    """``timm:<name>`` or ``tv:<name>`` as a :class:`LibraryBackbone` where it regroups, else a
    :class:`LibraryClassifier`. Unknown names and a missing library raise ``ConfigError``."""
    prefix, _, model_name = name.partition(":")
    if kwargs.get("pretrained") or kwargs.get("weights") is not None:
        raise ConfigError(f"model '{name}': peerkd trains from scratch and downloads nothing; drop pretrained / "
                          "weights from method.model_options")
    kwargs = {k: v for k, v in kwargs.items() if k not in ("pretrained", "weights")}
    library = LIBRARIES[prefix]
    net = _create_timm(model_name, num_classes, kwargs) if prefix == "timm" else \
        _create_torchvision(model_name, num_classes, kwargs)
    spec = {"library": library, "name": model_name, "kwargs": dict(kwargs, num_classes=num_classes)}
    regroup = _timm_layout if prefix == "timm" else _torchvision_layout
    try:
        return regroup(net, spec)
    except NotStaged as why:
        return LibraryClassifier(net, spec, str(why))


def _create_timm(name: str, num_classes: int, kwargs: dict) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise ConfigError(f"model 'timm:{name}' needs timm: pip install 'peerkd[timm]'") from None
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=1, cutoff=0.6)
        hint = f"did you mean 'timm:{close[0]}'? " if close else ""
        raise ConfigError(f"unknown timm model '{name}'; {hint}see timm.list_models()")
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    except TypeError as err:
        raise ConfigError(f"model 'timm:{name}': {err}") from None


def _create_torchvision(name: str, num_classes: int, kwargs: dict) -> nn.Module:
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)  # the classification models only
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
        hint = f"did you mean 'tv:{close[0]}'? " if close else ""
        raise ConfigError(f"unknown torchvision classification model '{name}'; {hint}see "
                       "torchvision.models.list_models(module=torchvision.models)")
    try:
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model 'tv:{name}': {err}") from None


def _flatten(module: nn.Module, opens: Callable[[str, nn.Module], bool], prefix: str = "") -> list:
    """``(qualified name, module)`` of ``module``'s children in registration order, a child opened into its own
    children where ``opens(name, child)``."""
    out = []
    for name, child in module.named_children():
        qualname = f"{prefix}{name}"
        if opens(qualname, child):
            out.extend(_flatten(child, opens, qualname + "."))
        else:
            out.append((qualname, child))
    return out


def _probe_input() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)  # a local generator: building a model draws no global random number
    return torch.randn(1, 3, PROBE_SIZE, PROBE_SIZE, generator=generator)


def _same(a, b) -> bool:
    return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and \
        torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def _run(modules: list[tuple[str, nn.Module]], x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    outs = []
    for _, m in modules:
        x = m(x)
        outs.append(x)
    return x, outs


def _top_level_params(net: nn.Module) -> None:
    own = [n for n, _ in net.named_parameters(recurse=False)] + [n for n, _ in net.named_buffers(recurse=False)]
    if own:
        raise NotStaged(f"it holds tensors of its own ({', '.join(own[:3])}) that its forward uses in code")


def _qualname_of(net: nn.Module, target: nn.Module) -> str:
    for name, module in net.named_modules():
        if module is target:
            return name
    raise NotStaged("its classifier is not one of its modules")


def _set_module(root: nn.Module, qualname: str, value: nn.Module) -> None:
    parent, _, leaf = qualname.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, value)


class _Eval:
    """Eval mode and no autograd for the probe (BatchNorm statistics and dropout untouched), restored after."""

    def __init__(self, net: nn.Module):
        self.net = net

    def __enter__(self):
        self.was_training = self.net.training
        self.grad = torch.is_grad_enabled()
        self.net.eval()
        torch.set_grad_enabled(False)

    def __exit__(self, *exc):
        torch.set_grad_enabled(self.grad)
        self.net.train(self.was_training)


def _timm_layout(net: nn.Module, spec: dict) -> LibraryBackbone:
    info = [dict(f) for f in getattr(net, "feature_info", None) or []]
    if not info or not all("module" in f for f in info):
        raise NotStaged("timm gives it no feature_info")
    classifier = net.get_classifier()
    if not isinstance(classifier, nn.Linear):
        raise NotStaged(f"its classifier is {type(classifier).__name__}, not an nn.Linear")
    _top_level_params(net)
    taps = [f["module"] for f in info]
    stem_taps = []
    for f in info:  # the leading stride-2 taps end the stem (when deeper taps exist)
        if f.get("reduction", 32) > STEM_MAX_REDUCTION:
            break
        stem_taps.append(f["module"])
    if len(stem_taps) == len(taps):
        stem_taps = []
    stage_taps = taps[len(stem_taps):]
    flat = _flatten(net, lambda q, m: any(t.startswith(q + ".") for t in taps))
    names = [q for q, _ in flat]
    if any(t not in names for t in taps) or [names.index(t) for t in taps] != sorted(names.index(t) for t in taps):
        raise NotStaged("its feature_info modules are not its children in order")
    stem_end = names.index(stem_taps[-1]) + 1 if stem_taps else names.index(stage_taps[0])
    stem, stages, start = flat[:stem_end], [], stem_end
    for tap in stage_taps:
        end = names.index(tap) + 1
        stages.append(flat[start:end])
        start = end
    trailing = flat[start:]
    classifier_name = _qualname_of(net, classifier)
    x = _probe_input()
    with _Eval(net):
        try:
            reference_map, reference_logits = net.forward_features(x), net(x)
            body_out, _ = _run(stem + [m for stage in stages for m in stage], x)
        except Exception as err:  # noqa: BLE001  (any failure of the probe: the model stays whole)
            raise NotStaged(f"the staged probe failed ({type(err).__name__}: {str(err)[:80]})") from None
        # the trailing modules forward_features still applies: the longest prefix that reproduces its output, never
        # a nested module (only top-level children can be the head's) nor the classifier's own branch
        candidates = []
        for cut in range(len(trailing) + 1):
            head_part = trailing[cut:]
            if any("." in q for q, _ in head_part) or not any(
                    classifier_name == q or classifier_name.startswith(q + ".") for q, _ in head_part):
                continue
            try:
                out, _ = _run(trailing[:cut], body_out)
            except Exception:  # noqa: BLE001
                continue
            if _same(out, reference_map):
                candidates.append(cut)
        if not candidates:
            raise NotStaged("its forward_features is not its children in order")
        cut = candidates[-1]
        stages[-1] = stages[-1] + trailing[:cut]
        head = _timm_head(net, trailing[cut:], classifier, classifier_name)
        maps = _staged_maps(stem, stages, x)
        try:
            same = _same(head(maps[-1]), reference_logits)
        except Exception:  # noqa: BLE001  (its forward_head needs a module the cut left in the last stage)
            same = False
        if not same:
            raise NotStaged("its forward_head is not pool + classifier on forward_features")
    keys = [("head.fc.", f"{classifier_name}."), ("head.pooled.", "")]
    return LibraryBackbone(stem, stages, head, keys, [m.shape[1] for m in maps], spec,
                           getattr(type(net), "_version", None))


def _timm_head(net: nn.Module, head_part: list[tuple[str, nn.Module]], classifier: nn.Linear,
               classifier_name: str) -> TimmHead:
    shell = object.__new__(type(net))
    shell.__dict__.update({k: (dict(v) if isinstance(v, dict) else v) for k, v in net.__dict__.items()})
    shell.__dict__.update(_modules=OrderedDict((q, m) for q, m in head_part), _parameters={}, _buffers={})
    _set_module(shell, classifier_name, nn.Identity())  # pre_logits never calls it; fc holds it
    return TimmHead(shell, classifier)


def _staged_maps(stem, stages, x) -> list[torch.Tensor]:
    x, _ = _run(stem, x)
    maps = []
    for stage in stages:
        x, _ = _run(stage, x)
        maps.append(x)
    return maps


def _torchvision_layout(net: nn.Module, spec: dict) -> LibraryBackbone:
    _top_level_params(net)
    children = list(net.named_children())
    if not children:
        raise NotStaged("it has no child modules")
    classifier_name, classifier = children[-1]
    linear = classifier[-1] if isinstance(classifier, nn.Sequential) and len(classifier) else classifier
    if not isinstance(linear, nn.Linear):
        raise NotStaged(f"its last module is {type(linear).__name__}, not an nn.Linear classifier")
    pre = list(classifier[:-1]) if isinstance(classifier, nn.Sequential) else []
    pre_names = [f"{classifier_name}.{i}" for i in range(len(pre))]
    pool_index = max((i for i, (_, m) in enumerate(children[:-1]) if isinstance(m, nn.AdaptiveAvgPool2d)), default=None)
    if pool_index is None:
        pool, body_children, middle = nn.AdaptiveAvgPool2d(1), children[:-1], []
    else:
        pool, body_children, middle = children[pool_index][1], children[:pool_index], children[pool_index + 1:-1]
    pre = [m for _, m in middle] + pre
    pre_names = [q for q, _ in middle] + pre_names
    body_names = {q for q, _ in body_children}
    flat = _flatten(net, lambda q, m: q in body_names and type(m) is nn.Sequential)
    flat = [(q, m) for q, m in flat if q.partition(".")[0] in body_names]
    x = _probe_input()
    with _Eval(net):
        try:
            reference = net(x)
            _, outs = _run(flat, x)
        except Exception as err:  # noqa: BLE001
            raise NotStaged(f"the staged probe failed ({type(err).__name__}: {str(err)[:80]})") from None
        if any(o.dim() != 4 for o in outs):
            raise NotStaged("its body does not keep (B, C, H, W) maps")
        reductions = [PROBE_SIZE // o.shape[-1] for o in outs]
        stem_end = sum(1 for r in reductions if r <= STEM_MAX_REDUCTION) or 1
        if reductions[:stem_end] != sorted(reductions[:stem_end]) or reductions != sorted(reductions):
            raise NotStaged("its resolution does not fall monotonically through its children")
        stem, stages = flat[:stem_end], []
        for i in range(stem_end, len(flat)):
            if not stages or reductions[i] != reductions[i - 1]:
                stages.append([])
            stages[-1].append(flat[i])
        if not stages:
            raise NotStaged("it has no stage after its stem")
        maps = _staged_maps(stem, stages, x)
        head = None
        for flatten_at in range(len(pre) + 1):
            candidate = TorchvisionHead(pool, pre, linear, flatten_at)
            try:
                if _same(candidate(maps[-1]), reference):
                    head = candidate
                    break
            except Exception:  # noqa: BLE001
                continue
        if head is None:
            raise NotStaged("its forward is not its children in order followed by pool + classifier")
    fc_name = classifier_name if linear is classifier else f"{classifier_name}.{len(pre) - len(middle)}"
    keys = [("head.fc.", f"{fc_name}.")]
    keys += [(f"head.pre.{i}.", f"{q}.") for i, q in enumerate(pre_names)]
    if pool_index is not None:
        keys.append(("head.pool.", f"{children[pool_index][0]}."))
    return LibraryBackbone(stem, stages, head, keys, [m.shape[1] for m in maps], spec,
                           getattr(type(net), "_version", None))


__all__ = ["LIBRARIES", "LibraryBackbone", "LibraryClassifier", "TimmHead", "TorchvisionHead",
           "build_library_model", "is_library_name"]
