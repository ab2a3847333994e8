"""Offline model builders: turn a package's files into a servable model folder (run by `edgeslm pull`)."""
