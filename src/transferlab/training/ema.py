"""An exponential moving average of the weights (`--ema 0.999`), kept as a callback.

After the t-th optimizer step of a phase each trained parameter's average moves towards it,
average = d x average + (1 - d) x weight with d = min(decay, (1 + t) / (10 + t)) (TensorFlow's
warm-up of the decay: a short fine-tuning run's average is not held back by its starting
weights), and buffers (BatchNorm statistics) are copied.
Validation, the best-epoch choice (EarlyStopping keeps the evaluated state) and the saved model
use the average; the optimizer keeps stepping the network's own weights. Each phase starts its
average from the weights the phase starts with (the restored best of the phase before), and the
average goes into checkpoints, so a resumed run ends on the weights an uninterrupted one does.
"""

from __future__ import annotations

import torch

from .callbacks import Callback


class EMA(Callback):
    order = 5  # after EarlyStopping has restored the best weights at a phase's end

    def __init__(self, decay: float = 0.999):
        self.decay = decay
        self.average: dict[str, torch.Tensor] | None = None
        self.updates = 0  # steps in this phase
        self._pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._buffers: list[tuple[torch.Tensor, torch.Tensor]] = []

    def on_fit_begin(self, trainer) -> None:
        self.average = _copy(trainer.network.state_dict())  # a checkpoint's average replaces it

    def on_phase_begin(self, trainer) -> None:
        if trainer.first_epoch == 0:
            self.average, self.updates = _copy(trainer.network.state_dict()), 0
        state = trainer.network.state_dict(keep_vars=True)
        device = next(iter(state.values())).device if state else torch.device("cpu")
        self.average = {k: v.to(device) for k, v in self.average.items()}
        params = dict(trainer.network.named_parameters())
        self._pairs = [(self.average[n], p) for n, p in params.items() if p.requires_grad]
        self._buffers = [(self.average[n], b) for n, b in trainer.network.named_buffers() if n in self.average]

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    def on_step_end(self, trainer, logs: dict) -> None:
        self.updates += 1
        decay = self.current_decay()
        with torch.no_grad():
            if self._pairs:
                averages, weights = zip(*self._pairs)
                torch._foreach_lerp_(list(averages), [w.detach() for w in weights], 1.0 - decay)
            for average, buffer in self._buffers:
                average.copy_(buffer)

    def on_phase_end(self, trainer) -> None:
        if trainer.early_stopping.best_weights is None:  # nothing validated: the average is the result
            trainer.network.load_state_dict(self.average)

    def evaluation_weights(self, trainer) -> dict | None:
        return self.average

    def state_dict(self) -> dict:
        return {"average": self.average, "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.average, self.updates = state["average"], state["updates"]


def _copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}
