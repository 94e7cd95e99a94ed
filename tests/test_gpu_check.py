"""tests/gpu_check.py: the T4 settings it makes on a GPU (torch.cuda faked) and its meta-device FLOP count."""
import types

import pytest
import torch

from gpu_check import count_training_tflop, measured_config, meta_model, t4_code_paths

@pytest.mark.parametrize("device, index", [(torch.device("cuda", 1), 1), (torch.device("cuda"), 3)])
def test_t4_code_paths_cap_the_gpu_at_14_gib_and_turn_flash_attention_off_globally(monkeypatch, device, index):
    calls = []  # the GPU with no index: the current one, 3
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda gpu: calls.append(("properties", gpu)) or
                        types.SimpleNamespace(total_memory=80 * 2**30))
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda *args: calls.append(("fraction", *args)))
    monkeypatch.setattr(torch.backends.cuda, "enable_flash_sdp", lambda enabled: calls.append(("flash", enabled)))
    assert t4_code_paths(device) is torch.float16
    assert calls == [("flash", False), ("properties", index), ("fraction", pytest.approx(14 / 80, rel=1e-12), index)]

@pytest.mark.slow  # two counts on the real architecture on the meta device: about 20 s
def test_the_flop_count_of_a_training_step_scales_with_batch_and_image_area():
    model = meta_model(measured_config(64, 1))
    one = count_training_tflop(measured_config(64, 1), model)
    assert 0.1 < one < 0.3  # 23.9 TFLOP at 512², batch 2 (printed by the script): about 0.19 at 64², batch 1
    assert 2 * 3.3 <= count_training_tflop(measured_config(128, 2), model) / one <= 2 * 4.7  # twice, on 4x the area
