"""Separate members on CUDA streams: the alternative to fusion that ``trainer.members: streams`` selects (the fork and
join behind :class:`peerkd.models.members.StreamedMembers`).

A cohort of small networks leaves most of an H100 idle: each kernel of a ResNet-32 at batch 128 fills a fraction of
the device. Fusion (:mod:`peerkd.models.fused`) makes the kernels wider; streams instead let the members' kernels run
side by side. :class:`StreamedModels` is an ``nn.ModuleList`` (same state_dict keys, same export, same maths) whose
:meth:`~StreamedModels.run` launches member ``i`` on side stream ``i``: every side stream first waits for the work
already queued on the caller's stream, and the caller's stream waits for every side stream before the outputs are
used. Autograd runs each backward op on the stream of its forward op, so the backward passes overlap too. Under a
CUDA-graph capture the fork and join become parallel branches of the graph.

Memory: the inputs are made on the caller's stream and read on the side streams, the outputs the other way round; each
is marked with ``record_stream`` so the caching allocator does not hand its memory out again before the other stream
is done with it. On a CPU (or for one member) :meth:`run` calls the members one after another.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn


class StreamedModels(nn.ModuleList):
    """Members run on their own CUDA streams (one after another elsewhere); a plain ``nn.ModuleList`` otherwise."""

    def __init__(self, modules=None):
        super().__init__(modules)
        object.__setattr__(self, "_side_streams", {})  # device -> list of streams; not module state

    def side_streams(self, device: torch.device) -> list[torch.cuda.Stream]:
        """One stream per member on ``device``, made once and reused (a graph replays on the streams it captured)."""
        streams = self._side_streams.get(device)
        if streams is None or len(streams) != len(self):
            streams = [torch.cuda.Stream(device) for _ in range(len(self))]
            self._side_streams[device] = streams
        return streams

    def run(self, inputs: list[torch.Tensor], call: Callable[[nn.Module, torch.Tensor], Any] | None = None) -> list:
        """``call(member i, inputs[i])`` for every member (default: the member's forward); the outputs (a tensor or a
        tuple of tensors per member) are ready on the caller's stream when this returns."""
        if len(inputs) != len(self):
            raise ValueError(f"StreamedModels.run: {len(self)} members, {len(inputs)} inputs")
        call = call or (lambda member, x: member(x))
        device = inputs[0].device
        if device.type != "cuda" or len(self) < 2:
            return [call(member, x) for member, x in zip(self, inputs)]
        caller = torch.cuda.current_stream(device)
        streams = self.side_streams(device)
        outputs = []
        for member, x, stream in zip(self, inputs, streams):
            stream.wait_stream(caller)  # the input (and everything before it) is ready on the side stream
            with torch.cuda.stream(stream):
                outputs.append(call(member, x))
            x.record_stream(stream)
        for out, stream in zip(outputs, streams):
            caller.wait_stream(stream)
            for tensor in (out if isinstance(out, (tuple, list)) else (out,)):
                tensor.record_stream(caller)
        return outputs

    def forward(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        return self.run(inputs)
