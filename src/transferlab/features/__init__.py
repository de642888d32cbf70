"""The `features` strategy's parts: the frozen pass (extract), its on-disk cache (store) and the
logistic regression fitted on the cached features (logistic)."""
