import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory):
    """tiny_model_factory(arch, layers=2, hidden=64) -> a saved model folder (cached per session)."""
    from tiny_models import save_tiny_model

    cache = {}

    def make(arch: str = "llama", layers: int = 2, hidden: int = 64):
        key = (arch, layers, hidden)
        if key not in cache:
            cache[key] = save_tiny_model(tmp_path_factory.mktemp(f"{arch}{layers}x{hidden}"), arch, layers, hidden)
        return cache[key]

    return make
