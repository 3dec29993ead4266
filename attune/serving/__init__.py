"""attune's model server: TensorFlow Serving's REST and gRPC APIs over the model repository.

Clients written for TF Serving (REST on :8501, gRPC on :8500 with the tensorflow-serving-api
stubs) work unchanged against ``attune serve models``, and the personalization API can switch
between this server and the official ``tensorflow/serving`` image by configuration.

* :mod:`attune.serving.config` - TF Serving's model config file, and repository discovery;
* :mod:`attune.serving.repository` - version discovery, loading, atomic swap, unloading;
* :mod:`attune.serving.servable` - one loaded SavedModel version and running its signatures;
* :mod:`attune.serving.tensors` - TF Serving's JSON tensor formats (row and columnar);
* :mod:`attune.serving.batching` - optional merging of concurrent requests;
* :mod:`attune.serving.core` - what REST and gRPC share; :mod:`attune.serving.rest`,
  :mod:`attune.serving.grpc_service` - the two front ends;
* :mod:`attune.serving.metrics` - Prometheus metrics; :mod:`attune.serving.server` - the process;
* :mod:`attune.serving.process` - run the server as a child process (demo, tests, benchmarks).

TensorFlow is imported only where models are loaded or tensors cross gRPC; this package sets
``TF_USE_LEGACY_KERAS=1`` first, as every attune process that imports TensorFlow does.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
