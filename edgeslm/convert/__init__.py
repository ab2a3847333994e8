"""Offline converters that turn a fetched package into an edgeslm model folder (the builds behind `edgeslm pull`)."""
