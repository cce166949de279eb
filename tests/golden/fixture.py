"""The golden fixtures' file format, read by the golden tests and written by ``tools/golden/`` (see README.md here).

A fixture is one ``.npz`` file (``numpy.savez_compressed``; read with ``allow_pickle=False``, so loading one runs no
code) of float32 / int64 arrays named ``<group>/<name>`` — ``weights/<the reference's own parameter or buffer name>``,
``batch/x``, ``batch/y``, ``outputs/...``, ``loss/...``, ``grads/<epoch>/<reference name>``, ``state/...`` — plus one
``meta`` entry: a JSON string with the format tag :data:`FORMAT`, the reference repository and the full commit it was
generated from, the reference files run, the generator and its command, the case (depth, batch, epochs, options),
torch's version and the date. A fixture of another format tag is refused with a message naming the generator to rerun.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

FORMAT = "peerkd-golden/1"  # bump when the layout of the arrays or of meta changes; readers refuse other tags
FIXTURES = Path(__file__).resolve().parent / "fixtures"
RTOL = 1e-5  # tolerance of a comparison, relative to the largest |value| of the reference tensor: float32 round-off
# of another summation order is ~1e-7 of it; a wrong setting (a missing layer, another scale) is >= 1e-3


@dataclass
class Fixture:
    """A loaded fixture: ``meta`` (dict) and ``arrays`` (name -> torch tensor)."""

    name: str
    meta: dict
    arrays: dict[str, torch.Tensor]

    def group(self, prefix: str) -> dict[str, torch.Tensor]:
        """The arrays under ``prefix/``, keyed by the rest of their name (e.g. ``group("weights")``)."""
        start = prefix.rstrip("/") + "/"
        return {k[len(start):]: v for k, v in self.arrays.items() if k.startswith(start)}

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.arrays[key]


def load(name: str) -> Fixture:
    """``fixtures/<name>.npz``, checked for its format tag."""
    path = FIXTURES / f"{name}.npz"
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path.name}: format {meta.get('format')!r}, this suite reads {FORMAT!r}; regenerate it "
                             f"with {meta.get('command', 'its generator in tools/golden/')}")
        arrays = {k: torch.from_numpy(np.array(data[k])) for k in data.files if k != "meta"}
    return Fixture(name, meta, arrays)


def save(path: Path, meta: dict, arrays: dict[str, torch.Tensor | np.ndarray]) -> None:
    """Write a fixture (the generators' side): float tensors as float32, integer ones as int64."""
    out = {}
    for key, value in arrays.items():
        value = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        out[key] = value.astype(np.float32) if value.dtype.kind == "f" else value.astype(np.int64)
    out["meta"] = np.array(json.dumps({"format": FORMAT, **meta}, sort_keys=True))
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **out)


def max_relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max(max |expected|, tiny): the number the README's table quotes."""
    actual, expected = actual.detach().double(), expected.detach().double()
    return float((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-30))


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str, rtol: float = RTOL) -> None:
    """``actual`` equals ``expected`` elementwise to ``rtol`` x max |expected|: one scale per tensor, since a
    gradient's small entries carry the round-off of its large ones."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != reference {tuple(expected.shape)}"
    scale = expected.detach().double().abs().max().item()
    diff = (actual.detach().double() - expected.detach().double()).abs().max().item()
    assert diff <= rtol * max(scale, 1e-12), \
        f"{what}: max |difference| {diff:.3g} > {rtol:g} x max |reference| {scale:.3g}"


def assert_all_close(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str,
                     rtol: float = RTOL) -> None:
    """Every entry of ``expected`` present in ``actual`` (same names) and close to it."""
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    assert not missing and not extra, f"{what}: names differ; missing {missing[:5]}, extra {extra[:5]}"
    for key in expected:
        assert_close(actual[key], expected[key], f"{what} {key}", rtol)
