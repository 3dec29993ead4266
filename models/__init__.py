"""attune's recommendation engine: TensorFlow Recommenders retrieval and ranking models,
strong baselines, honest offline evaluation, export for TF Serving and a model repository.

Modules, in the order data flows through them:

* :mod:`models.data` - loaders for the training-data contract (:mod:`attune.lake`: the columns
  of the batch layer's gold training-examples and item tables) from Delta tables, MovieTweetings
  and any CSV;
* :mod:`models.splits` - temporal, user-stratified and random splits that never leak;
* :mod:`models.features` - interactions -> the raw query features the exported SavedModels take
  at serving time (user id, recent items as the speed layer keeps them, request context);
* :mod:`models.encoders` - vocabularies, the item table and the towers' encoders (preprocessing
  that lives inside the models);
* :mod:`models.baselines` - popularity, recent popularity, item-kNN and Spark MLlib ALS;
* :mod:`models.retrieval` / :mod:`models.ranking` - the TFRS two-tower and DCN ranking models;
* :mod:`models.metrics` / :mod:`models.scoring` - Recall, NDCG, MAP, HitRate at k, coverage, and
  the one evaluation protocol every model is scored with;
* :mod:`models.evaluate` / :mod:`models.train` - the evaluation run and the training run;
* :mod:`models.export` / :mod:`models.repository` - SavedModels with raw-feature signatures and
  the promotion gate; the repository format (atomic publication into
  ``<repo>/<name>/<version>/``) is the core's :mod:`attune.model_repository`;
* :mod:`models.cli` - the ``attune models train|evaluate|list`` commands.

TensorFlow Recommenders 0.7 is written against Keras 2, while TensorFlow 2.16+ ships Keras 3 as
``tf.keras``. ``TF_USE_LEGACY_KERAS=1`` makes ``tf.keras`` resolve to the ``tf_keras`` package
(Keras 2), which TFRS needs. TensorFlow reads the variable once, at its first import, so it must
be set before anything imports TensorFlow: importing this package sets it (unless the caller
already chose), and every module here gets TensorFlow through :mod:`models._tensorflow`, which
sets it too (so it also holds when ``models`` is imported as a namespace package).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# Keep TensorFlow's C++ start-up chatter (CPU feature notices) out of progress output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
