"""Training: the strategies' recipes and phases, the one engine loop and its callbacks, batches
of pixels or cached activations, optimizers, the prefix cache and data parallelism."""
