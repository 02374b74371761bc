import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported, or it is read too late
# The models under test are tiny: one thread avoids the cost of synchronising threads, which dominates on a small
# or busy machine; set for torch and for every command the tests run (which honour it over their own default).
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from tiny_models import save_tiny_pipeline  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def sd1_path(tmp_path_factory) -> Path:
    """A tiny SD 1.x shaped pipeline folder (cross-attention width 768, epsilon prediction)."""
    return save_tiny_pipeline("sd1", tmp_path_factory.mktemp("sd1"))


@pytest.fixture(scope="session")
def sd2_path(tmp_path_factory) -> Path:
    """A tiny SD 2.x shaped pipeline folder (cross-attention width 1024, v-prediction)."""
    return save_tiny_pipeline("sd2", tmp_path_factory.mktemp("sd2"))


@pytest.fixture(scope="session")
def sdxl_path(tmp_path_factory) -> Path:
    """A tiny SDXL shaped pipeline folder (two text encoders, pooled text and size ids)."""
    return save_tiny_pipeline("sdxl", tmp_path_factory.mktemp("sdxl"))


@pytest.fixture(params=["sd1", "sd2"])
def tiny_path(request, sd1_path, sd2_path) -> Path:
    """Each tiny pipeline folder in turn."""
    return {"sd1": sd1_path, "sd2": sd2_path}[request.param]
