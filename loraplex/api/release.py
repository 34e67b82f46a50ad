"""The release of loraplex: the version the distribution, the images and the chart carry."""

__version__ = "0.1.0"
