"""Bandits: policies that learn from their outcomes, and off-policy evaluation (core, pure).

A *bandit policy* chooses one action (a content variant, a message, an experiment variant) for
each request, learns from what users did with it (impressions and clicks), and keeps exploring
so that it can notice when a worse-looking action is in fact better. Every choice is logged
with its *propensity*, the probability the policy had of choosing it: with those, *off-policy
evaluation* estimates from logged data how another policy would have done, without showing it
to anyone.

This package is part of the core: it imports only other core modules (never the API, Spark or
the models), so every layer can use it. Nothing heavy is imported at module level.
"""
