"""transferlab: transfer learning on small image data sets, from one command or one class."""

__version__ = "0.1.0"

# Names resolve on first use, so `transferlab --help` and `import transferlab` do not pay for
# importing torch, timm and scikit-learn (several seconds) before they are needed.
_EXPORTS = {
    "ImageClassifier": "classifier", "RunConfig": "config", "ImageSet": "data.sources",
    "load_source": "data.sources", "split_source": "data.split", "TransferlabError": "errors",
    "list_backbones": "models.backbones", "train": "api", "evaluate": "api", "demo": "api",
    "layers": "api", "compare": "api", "read_metadata": "export",
}
# export() and predict() live in transferlab.export and transferlab.predict: a package attribute
# of the same name as a submodule is replaced by the module once it is imported.
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'transferlab' has no attribute '{name}'")
    import importlib

    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
