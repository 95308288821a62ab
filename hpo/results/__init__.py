"""What a study produced: the best trial exported with its model card, the evaluation against
the paper, the spatial baseline, the reports and plots, and prediction on new clips. Builds on
`hpo.search` and `hpo.train`; never imports `hpo.cli`.

The names are those of ``__init__.pyi``; each is imported from its private module on first use
(`lazy_loader`), so that importing one of them does not import the whole layer (the CLI checks a
config without importing Ray or TensorFlow)."""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
