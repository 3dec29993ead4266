"""The tiny SavedModels of the conformance suite, and the model config that serves them.

Every version ``v`` computes something a test can work out by hand, with ``v`` inside, so an
answer says which version produced it:

``toy`` (versions 1 and 2; labels ``stable`` -> 1, ``canary`` -> 2)
    ``serving_default``: ``x`` float32 [batch], ``tag`` string [batch] ->
    ``y = 0.5 * x + v``, ``greeting = "v<v>:" + tag``, ``echo_bytes = tag`` (binary output);
    ``single``: ``x`` -> ``y = 0.5 * x + v`` (one input, one output);
    ``matrix``: ``m`` float32 [batch, 2] -> ``row_sum`` [batch], ``scaled = m * v`` [batch, 2];
    ``ints``: ``n`` int64 [batch] -> ``doubled = 2 n`` int64, ``is_even`` bool;
    ``total``: ``a`` float32 [n], ``b`` float32 [m] -> ``total = sum(a) + sum(b)`` (a scalar).
``rolling`` (latest version only; the hot-load test publishes new versions)
    ``serving_default``: ``x`` float32 [batch] -> ``y = 0.5 * x + v``.

Versions are written into a ``.tmp-*`` folder and renamed into place, as the model repository
publishes them, so a server never sees half a model.

To run the suite against the official TF Serving image (see docs/serving.md)::

    python -m tests.integration.serving.conformance_models /tmp/conformance --base-path /models
    docker run --rm -p 8501:8501 -p 8500:8500 -v /tmp/conformance:/models tensorflow/serving \\
        --model_config_file=/models/models.config --file_system_poll_wait_seconds=1
    TF_SERVING_URL=http://localhost:8501 TF_SERVING_GRPC=localhost:8500 \\
        TF_SERVING_REPO=/tmp/conformance pytest tests/integration/serving/test_conformance.py
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import sys
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

TOY, ROLLING = "toy", "rolling"
CONFIG_FILE = "models.config"


def _toy_module(version: int):  # -> tf.Module
    import tensorflow as tf

    v = float(version)
    prefix = f"v{version}:"

    class Toy(tf.Module):
        @tf.function(
            input_signature=[
                tf.TensorSpec([None], tf.float32, name="x"),
                tf.TensorSpec([None], tf.string, name="tag"),
            ]
        )
        def main(self, x, tag):
            return {
                "y": 0.5 * x + v,
                "greeting": tf.strings.join([tf.fill(tf.shape(tag), prefix), tag]),
                "echo_bytes": tf.identity(tag),
            }

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def single(self, x):
            return {"y": 0.5 * x + v}

        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="m")])
        def matrix(self, m):
            return {"row_sum": tf.reduce_sum(m, axis=1), "scaled": m * v}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="n")])
        def ints(self, n):
            return {"doubled": n * 2, "is_even": tf.equal(n % 2, 0)}

        @tf.function(
            input_signature=[
                tf.TensorSpec([None], tf.float32, name="a"),
                tf.TensorSpec([None], tf.float32, name="b"),
            ]
        )
        def total(self, a, b):
            return {"total": tf.reduce_sum(a) + tf.reduce_sum(b)}

    module = Toy()
    signatures = {
        "serving_default": module.main.get_concrete_function(),
        "single": module.single.get_concrete_function(),
        "matrix": module.matrix.get_concrete_function(),
        "ints": module.ints.get_concrete_function(),
        "total": module.total.get_concrete_function(),
    }
    return module, signatures


def _rolling_module(version: int):
    import tensorflow as tf

    v = float(version)

    class Rolling(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def main(self, x):
            return {"y": 0.5 * x + v}

    module = Rolling()
    return module, {"serving_default": module.main.get_concrete_function()}


def write_version(base: Path, name: str, version: int) -> Path:
    """Write version ``version`` of model ``name`` under ``base/name`` atomically (no-op when
    it exists)."""
    import tensorflow as tf

    folder = base / name
    target = folder / str(version)
    if (target / "saved_model.pb").is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    module, signatures = (_toy_module if name == TOY else _rolling_module)(version)
    tmp = folder / f".tmp-{secrets.token_hex(4)}"
    try:
        tf.saved_model.save(module, str(tmp), signatures=signatures)
        os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def model_config(base_path: str) -> str:
    """The model config file (TF Serving's format) for the models under ``base_path``."""
    base = base_path.rstrip("/")
    return f"""model_config_list {{
  config {{
    name: "{TOY}"
    base_path: "{base}/{TOY}"
    model_platform: "tensorflow"
    model_version_policy {{ specific {{ versions: 1 versions: 2 }} }}
    version_labels {{ key: "stable" value: 1 }}
    version_labels {{ key: "canary" value: 2 }}
  }}
  config {{
    name: "{ROLLING}"
    base_path: "{base}/{ROLLING}"
    model_platform: "tensorflow"
    model_version_policy {{ latest {{ num_versions: 1 }} }}
  }}
}}
"""


def write_repository(root: Path, base_path: str | None = None) -> Path:
    """Write the models (``toy`` 1 and 2, ``rolling`` 1; existing versions are kept) and the
    model config naming them as ``base_path`` (default: ``root``'s absolute path). Returns
    the config file."""
    root.mkdir(parents=True, exist_ok=True)
    for name, version in ((TOY, 1), (TOY, 2), (ROLLING, 1)):
        write_version(root, name, version)
    config = root / CONFIG_FILE
    config.write_text(model_config(base_path or str(root.absolute())))
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="folder to write the models into")
    parser.add_argument(
        "--base-path",
        help="the folder as the server sees it, e.g. /models inside a container "
        "(default: the folder's absolute path)",
    )
    args = parser.parse_args(argv)
    config = write_repository(args.root, args.base_path)
    print(f"wrote the conformance models under {args.root} and {config}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
