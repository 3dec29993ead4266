"""What the REST and gRPC front ends share: addressing, predict, metadata, status, metrics.

Both APIs turn a request into the same calls here, so they answer the same way (and with the
same errors) for the same model, version, label and signature.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from attune.serving.batching import Batcher, BatchingOptions
from attune.serving.errors import invalid_argument
from attune.serving.metrics import UNKNOWN_MODEL, ServingMetrics
from attune.serving.repository import ModelManager, VersionStatus
from attune.serving.servable import Servable, validate_inputs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    servable: Servable
    signature: str  # the signature that ran (the default resolved)
    outputs: dict[str, np.ndarray]


class ServingCore:
    def __init__(
        self,
        manager: ModelManager,
        metrics: ServingMetrics,
        batching: BatchingOptions | None = None,
    ) -> None:
        self.manager = manager
        self.metrics = metrics
        self.batching = batching

    def model_label(self, name: str) -> str:
        """``name`` for metric labels when it is a configured model, else ``-``."""
        return name if self.manager.knows(name) else UNKNOWN_MODEL

    def resolve(self, name: str, version: int | None, label: str | None) -> Servable:
        return self.manager.resolve(name, version, label)

    def predict(
        self,
        servable: Servable,
        signature_name: str,
        inputs: Mapping[str, np.ndarray],
        output_filter: Sequence[str] = (),
    ) -> Prediction:
        sig = servable.signature(signature_name)
        validate_inputs(sig, inputs)
        for alias in output_filter:
            if alias not in sig.outputs:
                raise invalid_argument(
                    f"output tensor alias not found in signature: {alias} Outputs expected to "
                    f"be in the set {{{','.join(sorted(sig.outputs))}}}."
                )
        batcher = self._batcher(servable, sig.name) if self.batching is not None else None
        outputs = batcher.submit(inputs) if batcher else servable.run(sig.name, inputs)
        if output_filter:
            outputs = {k: outputs[k] for k in dict.fromkeys(output_filter)}
        return Prediction(servable, sig.name, outputs)

    def _batcher(self, servable: Servable, signature: str) -> Batcher | None:
        """The batching queue of a servable's signature; None once the servable is unloaded
        (a request still holding it then runs on its own)."""
        batcher: Batcher | None = servable.batchers.get(signature)
        if batcher is not None:
            return batcher
        assert self.batching is not None
        with servable.batchers_lock:
            if servable.closed:
                return None
            batcher = servable.batchers.get(signature)
            if batcher is None:
                model, options = servable.name, self.batching

                def run(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
                    return servable.run(signature, inputs)

                def on_batch(requests: int, rows: int) -> None:
                    self.metrics.batch(model, signature, requests, rows)

                batcher = Batcher(
                    run, options, name=f"{model}-v{servable.version}-{signature}", on_batch=on_batch
                )
                servable.batchers[signature] = batcher
        return batcher

    def status(
        self, name: str, version: int | None, label: str | None
    ) -> list[tuple[int, VersionStatus]]:
        return self.manager.status(name, version, label)

    def status_json(self, name: str, version: int | None, label: str | None) -> dict[str, Any]:
        """GetModelStatusResponse as TF Serving's REST API writes it."""
        return {
            "model_version_status": [
                {
                    "version": str(v),
                    "state": s.state,
                    "status": {"error_code": s.error_code.name, "error_message": s.error_message},
                }
                for v, s in self.status(name, version, label)
            ]
        }

    def metadata_json(self, servable: Servable) -> dict[str, Any]:
        """GetModelMetadataResponse as TF Serving's REST API writes it."""
        return {
            "model_spec": {
                "name": servable.name,
                "signature_name": "",
                "version": str(servable.version),
            },
            "metadata": {"signature_def": servable.signature_defs_json()},
        }
