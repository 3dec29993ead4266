"""Progress output for long work: a tqdm bar over all training steps (rate, ETA, loss)."""

from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm

from models._tensorflow import tf


class KerasProgress(tf.keras.callbacks.Callback):
    """One bar for a whole ``fit``: steps done of ``epochs * steps``, with the running loss."""

    def __init__(self, label: str, epochs: int, steps: int, enabled: bool = True) -> None:
        super().__init__()
        self.label = label
        self.total = epochs * steps
        self.epochs = epochs
        self.enabled = enabled
        self.bar: Any = None
        self.epoch = 0

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.bar = tqdm(
            total=self.total, desc=f"training {self.label}", unit="step", disable=not self.enabled
        )

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.epoch = epoch + 1

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self.bar is not None:
            self.bar.update(1)
            if logs and batch % 10 == 0:
                self.bar.set_postfix(
                    epoch=f"{self.epoch}/{self.epochs}", loss=f"{float(logs.get('loss', 0)):.4f}"
                )

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self.bar is not None:
            self.bar.close()
