"""The GPU fast path of the CARIL agent: preprocessing and the network replayed as one CUDA graph.

At batch 1 a network forward is hundreds of small kernels, and launching them one by one from Python costs
more than running them (an H100 took 4.6 ms per ``act()`` of the ResNet-50 ``paper`` network, eagerly). This
captures the whole path once per frame shape::

    pinned uint8 frame --async copy--> static (1, H, W, 3) input on the GPU
        --> agent.preprocess.preprocess_batch (crop + resize as matrices: the CPU path's numbers to 1/255)
        --> channels-last, bf16 autocast --> DualHeadNet(command) --> static [steer, logits...] (1 + n_bins)

and each call copies the frame and command in, replays the graph and copies the outputs back in one transfer
(which waits for the GPU). With ``capture=False`` the same static-buffer path runs eagerly (any device), which
is how the CPU tests check it against :meth:`agent.caril_agent.CarilAgent.predict`.

Opt in with ``CarilAgentConfig(cuda_graphs=True)``; a capture that fails is logged and the agent stays on the
eager path, so the option can never stop the control loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from agent.preprocess import PreprocessConfig, preprocess_batch

log = logging.getLogger(__name__)

WARMUP_CALLS = 3  # eager calls on a side stream before capture (cuDNN picks its algorithms, caches fill)


class GraphedForward:
    """``(frame, command) -> (normalised regression, logits)`` through static buffers, replayed as a graph.

    ``frame_shape`` is (H, W, 3); frames of another shape need another instance. Build it inside
    ``torch.inference_mode()`` (the agent's ``predict`` is), as every later call is.
    """

    def __init__(self, model: nn.Module, preprocess: PreprocessConfig, frame_shape: tuple[int, int, int],
                 device: torch.device, *, amp: bool = True, capture: bool = True) -> None:
        self.frame_shape = tuple(frame_shape)
        on_cuda = device.type == "cuda"
        self._host = torch.empty((1, *frame_shape), dtype=torch.uint8, pin_memory=on_cuda)  # staging buffer
        self._host_np = self._host.numpy()[0]  # (H, W, 3) view for np.copyto
        self._frame = torch.zeros((1, *frame_shape), dtype=torch.uint8, device=device)
        self._command = torch.full((1,), 4, dtype=torch.long, device=device)
        self._run = self._forward_fn(model, preprocess, amp and on_cuda)
        self._graph: torch.cuda.CUDAGraph | None = None
        self._out = self._capture(device) if capture and on_cuda else None

    def __call__(self, frame: np.ndarray, command: int) -> tuple[float, np.ndarray]:
        self.stage(frame, command)
        return self.run()

    def stage(self, frame: np.ndarray, command: int) -> None:
        """Queue the frame (H, W, 3 uint8, this instance's shape) and the command for the next :meth:`run`."""
        np.copyto(self._host_np, frame)
        self._frame.copy_(self._host, non_blocking=True)
        self._command.fill_(int(command))

    def run(self) -> tuple[float, np.ndarray]:
        """Preprocess and forward the staged frame: (normalised regression, logits (n_bins,) float32)."""
        if self._graph is not None:
            self._graph.replay()
            out = self._out
        else:
            out = self._run()
        values = out.cpu().numpy()[0]  # (1 + n_bins,); the copy waits for the GPU
        return float(values[0]), values[1:]

    def _forward_fn(self, model: nn.Module, preprocess: PreprocessConfig, amp: bool) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            x = preprocess_batch(self._frame, preprocess).contiguous(memory_format=torch.channels_last)
            # no autocast weight cache: cast copies made during capture would be freed under the graph
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp, cache_enabled=False):
                out = model(x, command=self._command)
            return torch.cat([out["steer"][:, None], out["logits"]], dim=1).float()  # (1, 1 + n_bins)

        return run

    def _capture(self, device: torch.device) -> torch.Tensor:
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_CALLS):
                self._run()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self._run()
        self._graph = graph
        return out
