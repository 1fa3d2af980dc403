"""Test-wide setup: never touch the network, never write to the user's HF cache."""
import os
import tempfile

# huggingface_hub reads these at import time, so they must be set before anything imports it.
os.environ['HF_HUB_OFFLINE'] = '1'
os.environ['HF_DATASETS_OFFLINE'] = '1'
os.environ.setdefault('HF_HOME', tempfile.mkdtemp(prefix='timm_ff_hf_home_'))
os.environ['HF_HUB_DISABLE_TELEMETRY'] = '1'
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')

import pytest  # noqa: E402
import torch  # noqa: E402

# under pytest-xdist (pyproject's addopts) each worker has a core: one thread, as the subprocesses tests launch
torch.set_num_threads(1 if os.environ.get('PYTEST_XDIST_WORKER') else min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
