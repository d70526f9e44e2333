"""lifecycle: a retrainable compressed model lifecycle manager for small CPU text classifiers."""

__version__ = "0.1.0"
