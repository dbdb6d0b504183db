"""Runs only where CUDA is present (skipped elsewhere): the service on the GPU."""

import pytest
import torch

from app.main import create_app
from tests.conftest import make_settings, serving

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def test_service_on_cuda_loads_checkpoint_onto_the_gpu_and_completes(tmp_path):
    settings = make_settings(tmp_path).model_copy(update={"device": "cuda"})
    for _ in range(2):  # first start trains, second loads the checkpoint straight onto the GPU
        with serving(create_app(settings)) as c:
            assert c.get("/health").json()["device"].startswith("cuda")
            service = c.app.state.service
            assert service.models.active.model.fc.weight.device.type == "cuda"
            r = c.post("/complete", json={"prefix": "good", "max_new_chars": 11})
            assert r.json()["choices"][0]["text"] == "good i am fine "
            r = c.post("/complete", json={"prefix": "h", "max_new_chars": 30, "temperature": 1.0, "seed": 1, "n": 4})
            assert r.status_code == 200
