"""fedleak: measure how much private data leaks from federated-learning updates.

The pipeline is client → :class:`~fedleak.fl.Payload` → attack → reconstruction → evaluation;
see :func:`fedleak.pipeline.run` for one run and ``fedleak attack`` for the command line.
"""

__version__ = "0.1.0"
