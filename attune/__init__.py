"""attune: open-source real-time personalization (lambda architecture on Kafka, Spark + Delta
Lake, Redis and TensorFlow Recommenders)."""

__version__ = "0.1.0"
