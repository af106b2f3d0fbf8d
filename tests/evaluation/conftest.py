"""Fixtures for the evaluation tests: a tiny Llama saved to disk and a 2:4-pruned copy."""
from __future__ import annotations

from pathlib import Path

import pytest

from eval_fixtures import prune_folder


@pytest.fixture(scope="session")
def tiny_dense(tiny_model_factory) -> Path:
    return tiny_model_factory("llama", 2, 64)


@pytest.fixture(scope="session")
def tiny_sparse(tiny_dense, tmp_path_factory) -> Path:
    return prune_folder(tiny_dense, tmp_path_factory.mktemp("sparse") / "model")
