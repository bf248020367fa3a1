import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
sys.path.insert(0, str(TESTS))

from benchmark.registry import load_builtins  # noqa: E402

load_builtins()
import tiny_suite  # noqa: E402,F401  (registers the test-only suite and adapters)


@pytest.fixture(scope="session")
def tiny_source_state(tmp_path_factory):
    """A trained tiny-digits source model (seed 0), trained once per test session."""
    import torch

    from benchmark.adapter import Adapter
    from benchmark.registry import SUITES
    from benchmark.training import seed_everything, train_source

    suite = SUITES.get("tiny-digits")()
    seed_everything(0)
    model = suite.build_model()
    train_source(model, suite.load(suite.source, "train"), suite.recipe, 0, Adapter(),
                 torch.device("cpu"), progress=False)
    return suite, {k: v.clone() for k, v in model.state_dict().items()}
