"""Experiments: declarations, assignment, running state, analysis (core, pure where possible).

An *experiment* is declared in ``config/experiments.yaml`` (path: config ``experiments.file``)
and checked by :mod:`attune.experiments.spec`: its variants (ranking on or off, a model label, a
rule set, the candidate sources), their allocation weights, who may enter (targeting), the
*layer* it shares with the experiments it excludes, its planned window and the metrics it is
judged on. Declaring an experiment does not run it: ``attune experiments start ID`` records it
as running in Redis (:mod:`attune.experiments.state`, with the allocation it started with) and
``attune experiments stop ID`` ends it (:mod:`attune.experiments.cli`).

Every recommendation request is assigned by :mod:`attune.experiments.assignment`: a long-term
holdout first, then, per layer, one hash of the user that picks at most one running experiment
of the layer and a second hash that picks its variant. Nothing is stored per user: the same
user always gets the same answer while the declarations and the running state stay the same.

The analysis (:mod:`attune.experiments.stats`, :mod:`attune.experiments.verdict`) and team-draft
interleaving (:mod:`attune.experiments.interleaving`) are pure functions over counts; the batch
layer computes the counts and the dashboard shows the results.

This package is part of the core: it imports only other core modules (never the API, Spark or
the models), so every layer can use it. Nothing heavy is imported here.
"""
