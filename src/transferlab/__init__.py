"""transferlab: transfer learning on small image data sets, from one command or one class."""

__version__ = "0.1.0"

# Names resolve on first use, so `transferlab --help` and `import transferlab` do not pay for
# importing torch, timm and scikit-learn (several seconds) before they are needed.
# No name here is also the name of a submodule of transferlab: importing that submodule would
# replace the function with the module.
_EXPORTS = {
    "ImageClassifier": "classifier", "AutoClassifier": "selection.auto", "RunConfig": "config", "ImageSet": "data.types",
    "load_source": "data.sources", "split_source": "data.split", "TransferlabError": "errors",
    "list_backbones": "models.backbones", "train": "api", "evaluate": "api", "demo": "api",
    "layers": "api", "compare": "api", "lr_find": "api", "predict": "inference.predict",
    "export": "inference.export", "read_metadata": "inference.export", "serve": "serving.server", "Callback": "training.callbacks",
    "find_label_issues": "audit.labels", "LabelIssues": "audit.labels",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'transferlab' has no attribute '{name}'")
    import importlib

    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    if name == "ImageClassifier":  # its default strategy, auto, is AutoClassifier: registered on import
        importlib.import_module(".selection.auto", __name__)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
