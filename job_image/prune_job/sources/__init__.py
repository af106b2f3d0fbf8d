"""Where inputs come from: the one URI parser (`uris`), model resolution
(`models`), data files and builtin texts (`texts`), builtin models
(`builtin`) and the cheap checks `prune-job validate` runs (`preflight`).

Import the submodules directly; this package imports nothing, so that the
torch-free API types can use `sources.uris`.
"""
