"""Branches that only run on a GPU, run here with torch.cuda faked: each fake records the arguments it was given."""
import types

import pytest
import torch

from notebook_library import elite, smoke_config

CUDA, CPU = torch.device("cuda"), torch.device("cpu")
pytestmark = pytest.mark.filterwarnings("ignore:CUDA is not available:UserWarning")  # autocast on the faked GPU

@pytest.fixture
def cuda(monkeypatch):
    """torch.cuda as a T4 answers; .calls holds (function, args) in order, .answers what each returns."""
    fake = types.SimpleNamespace(calls=[], answers={
        "get_device_capability": (7, 5), "max_memory_reserved": 6 * 2**30, "synchronize": None,
        "get_device_properties": types.SimpleNamespace(name="Tesla T4", total_memory=15 * 2**30, major=7, minor=5),
        "get_rng_state_all": [torch.tensor([1, 2], dtype=torch.uint8)], "set_rng_state_all": None})
    for name in fake.answers:
        monkeypatch.setattr(torch.cuda, name, lambda *args, _n=name: fake.calls.append((_n, args)) or fake.answers[_n])
    return fake

@pytest.mark.parametrize("capability, expected", [((7, 5), torch.float16), ((8, 0), torch.bfloat16)])
def test_dtype_follows_the_compute_capability_and_the_report_names_the_gpu(cuda, capability, expected):
    cuda.answers["get_device_capability"] = capability
    assert elite.choose_dtype(CUDA) is expected and elite.choose_dtype(CPU) is torch.float32
    assert elite.describe_device(CUDA) == dict(device="cuda", name="Tesla T4", memory_gib=15.0, capability="7.5")
    assert elite.peak_memory_gib(CUDA) == 6.0 and elite.peak_memory_gib(CPU) == 0.0  # the device's peak, in GiB
    assert cuda.calls == [("get_device_capability", (CUDA,)), ("get_device_properties", (CUDA,)),
                          ("max_memory_reserved", (CUDA,))]  # each asked of the device; nothing for the CPU

def test_cuda_random_states_are_saved_and_restored(cuda, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    states = elite.rng_states()
    assert [state.tolist() for state in states["cuda"]] == [[1, 2]]
    elite.restore_rng_states(states)
    assert cuda.calls == [("get_rng_state_all", ()), ("set_rng_state_all", (states["cuda"],))]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert elite.rng_states()["cuda"] == [] and len(cuda.calls) == 2  # no GPU: no CUDA state asked for

class Recording(list):
    """Stands for the image and the enhancer, and is the log of what time_inference asks of them."""
    unet = "a UNet"

    def __getitem__(self, index):  # image[None]
        return self

    def __getattr__(self, name):  # to(device), encode, predict_clean_latent, decode
        return lambda value, *_: self.append(("to", value) if name == "to" else name) or (
            self if name == "to" else (value, []) if name == "encode" else value)

def test_timing_synchronises_the_gpu_around_every_timed_run(cuda, tiny_enhancer):
    elite.time_inference(tiny_enhancer, torch.rand(3, 32, 32) * 2 - 1, CPU, torch.float32)
    assert cuda.calls == []  # the CPU runs synchronously: nothing to synchronise
    cuda.calls = log = Recording()  # synchronisations land in the same log as the enhancer's calls
    timing = elite.time_inference(log, log, CUDA, torch.float16)
    timed = lambda k: [("synchronize", (CUDA,)), ("to", CUDA), "encode", *["predict_clean_latent"] * k,  # noqa
                       "decode", ("synchronize", (CUDA,))]
    assert log == [*timed(1) * 4, *timed(4) * 4, ("get_device_properties", (CUDA,))]  # a warm-up, then 3 timed
    assert timing["repeats"] == 3 and set(timing["ms_by_unet_passes"]) == {"1", "4"} and timing["device"] == "Tesla T4"

def test_an_fp16_decode_that_overflows_is_decoded_again_in_fp32(tiny_model_dir, monkeypatch, capsys):
    enhancer = elite.build_enhancer(smoke_config(), CPU, torch.float16, str(tiny_model_dir))  # frozen fp16, as a T4
    images = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.autocast("cpu", dtype=torch.float16):
        latent, taps = enhancer.encode(images)
        latent = enhancer.predict_clean_latent(latent)
    in_fp32 = elite.build_enhancer(smoke_config(), CPU, torch.float32, str(tiny_model_dir))  # the same weights
    expected = in_fp32.decode(latent.float(), [tap.float() for tap in taps])
    monkeypatch.setattr(enhancer, "decode", lambda latent, taps: torch.full_like(latent, float("inf")))
    enhanced = elite.enhance(enhancer, images, 1, CPU, torch.float16)
    assert "fp32" in capsys.readouterr().out and enhanced.dtype == torch.float32
    assert torch.isfinite(enhanced).all() and torch.allclose(enhanced, expected, atol=1e-3)
    assert {p.dtype for p in enhancer.vae.parameters() if not p.requires_grad} == {torch.float16}  # left as they were
    assert {p.dtype for p in enhancer.vae.parameters() if p.requires_grad} == {torch.float32}
