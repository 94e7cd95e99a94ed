"""Every branch that only runs on a GPU, run here with the torch.cuda functions it calls faked: each fake records
its arguments and checks them as the real function would, so a wrong signature or a missing branch fails here.

Inventory (function: CUDA calls): choose_dtype / compute_dtype: get_device_capability; describe_device:
get_device_properties; require_device_for; prepare_gpu -> cap_gpu_memory: current_device, get_device_properties,
set_per_process_memory_fraction; set_attention_kernels: backends.cuda.enable_flash_sdp; reset_peak_memory_stats;
release_previous_run: memory_reserved, empty_cache (test_run_record.py); seeded: device_count, get_rng_state,
set_rng_state; rng_states / restore_rng_states: get_rng_state_all, set_rng_state_all; Optimization.create:
GradScaler(device type, enabled); peak_memory_gib: max_memory_reserved, max_memory_allocated; median_ms:
synchronize; enhance_batch: the fp32 decode fallback after an fp16 overflow; train: the out-of-memory handler
(test_training.py)."""
import types

import pytest
import torch

from notebook_library import as_skip_convs, elite, smoke_config

CUDA = torch.device("cuda")
GIB = 2**30


class FakeCuda:
    """torch.cuda as a T4 (or another card) would answer, recording every call."""

    def __init__(self, monkeypatch, capability=(7, 5), total_gib=15.0, name="Tesla T4"):
        self.calls, self.flash = [], True
        properties = types.SimpleNamespace(name=name, total_memory=int(total_gib * GIB), major=capability[0],
                                           minor=capability[1])
        fakes = {"is_available": lambda: True, "device_count": lambda: 1, "current_device": lambda: 0,
                 "get_device_capability": lambda device=None: capability,
                 "get_device_properties": lambda device=None: properties,
                 "set_per_process_memory_fraction": self.memory_fraction,
                 "reset_peak_memory_stats": lambda device=None: None,
                 "max_memory_reserved": lambda device=None: 6 * GIB, "max_memory_allocated": lambda device=None: 5 * GIB,
                 "get_rng_state_all": lambda: [torch.tensor([1], dtype=torch.uint8)],
                 "set_rng_state_all": lambda states: None, "get_rng_state": lambda device="cuda": torch.tensor([7]),
                 "set_rng_state": lambda state, device="cuda": None, "synchronize": lambda device=None: None}
        for function, fake in fakes.items():
            monkeypatch.setattr(torch.cuda, function, self.recorded(function, fake))
        monkeypatch.setattr(torch.backends.cuda, "enable_flash_sdp", self.recorded("enable_flash_sdp", self.set_flash))
        monkeypatch.setattr(torch.backends.cuda, "flash_sdp_enabled", lambda: self.flash)

    def recorded(self, function, fake):
        def call(*args, **kwargs):
            self.calls.append((function, args, kwargs))
            return fake(*args, **kwargs)
        return call

    @staticmethod
    def memory_fraction(fraction, device=None):
        if isinstance(device, torch.device) and device.index is None:  # what torch >= 2.11 rejects
            raise ValueError(f"Expected a torch.device with a specified index or an integer, but got:{device}")
        assert 0 < fraction <= 1

    def set_flash(self, enabled):
        self.flash = enabled

    def arguments(self, function) -> list[tuple]:
        return [args for name, args, _ in self.calls if name == function]


@pytest.mark.parametrize("capability, expected", [((7, 5), torch.float16), ((8, 0), torch.bfloat16),
                                                  ((9, 0), torch.bfloat16)])
def test_auto_precision_follows_the_compute_capability(monkeypatch, capability, expected):
    FakeCuda(monkeypatch, capability=capability)
    assert elite.choose_dtype(CUDA) is expected
    assert elite.compute_dtype(elite.Config(), CUDA) is expected
    assert elite.compute_dtype(elite.Config(precision="fp32"), CUDA) is torch.float32
    assert elite.compute_dtype(elite.Config(emulate_t4=True), CUDA) is torch.float16  # a T4 even on an H100


def test_device_report_names_the_gpu(monkeypatch):
    FakeCuda(monkeypatch, capability=(9, 0), total_gib=79.2, name="NVIDIA H100 80GB HBM3")
    assert elite.describe_device(CUDA) == {"device": "cuda", "name": "NVIDIA H100 80GB HBM3", "memory_gib": 79.2,
                                           "capability": "9.0"}


def test_emulating_a_t4_caps_memory_by_device_index_and_turns_flash_attention_off(monkeypatch):
    cuda = FakeCuda(monkeypatch, capability=(9, 0), total_gib=80.0)
    report = elite.prepare_gpu(elite.Config(run_mode="footprint", emulate_t4=True), CUDA)
    assert cuda.arguments("set_per_process_memory_fraction") == [(15 / 80, 0)]
    assert cuda.arguments("enable_flash_sdp") == [(False,)] and cuda.arguments("reset_peak_memory_stats") == [(CUDA,)]
    assert report["memory_cap_gib"] == 15.0 and report["attention"]["flash"] is False


def test_a_second_run_without_a_cap_lifts_the_first_runs_cap(monkeypatch):
    cuda = FakeCuda(monkeypatch, total_gib=40.0)
    elite.prepare_gpu(elite.Config(gpu_memory_gib=12.0), CUDA)
    report = elite.prepare_gpu(elite.Config(), CUDA)
    assert cuda.arguments("set_per_process_memory_fraction") == [(12 / 40, 0), (1.0, 0)]
    assert cuda.arguments("enable_flash_sdp") == [(True,), (True,)] and report["memory_cap_gib"] is None


def test_t4_settings_are_refused_on_a_cpu_and_conflicting_ones_anywhere():
    cpu = torch.device("cpu")
    for config in (elite.Config(run_mode="smoke", precision="fp16"), elite.Config(run_mode="footprint", emulate_t4=True)):
        with pytest.raises(RuntimeError, match="need a GPU"):
            elite.require_device_for(config, cpu)
    with pytest.raises(ValueError, match="emulate_t4 runs in fp16"):
        elite.Config(emulate_t4=True, precision="bf16")
    with pytest.raises(ValueError, match="gpu_memory_gib=40.0: a T4 has 15 GiB"):
        elite.Config(emulate_t4=True, gpu_memory_gib=40.0)


def test_peak_memory_reads_the_devices_counters(monkeypatch):
    FakeCuda(monkeypatch)
    assert elite.peak_memory_gib(CUDA) == 6.0 and elite.peak_memory_gib(CUDA, "allocated") == 5.0
    assert elite.peak_memory_gib(torch.device("cpu")) == 0.0


def test_cuda_random_states_are_saved_and_restored(monkeypatch):
    cuda = FakeCuda(monkeypatch)
    states = elite.rng_states()
    assert [state.tolist() for state in states["cuda"]] == [[1]]
    elite.restore_rng_states(states)
    assert cuda.arguments("set_rng_state_all") == [(states["cuda"],)]


def test_seeded_blocks_fork_the_cuda_generator_too(monkeypatch):
    cuda = FakeCuda(monkeypatch)
    with elite.seeded(3):
        pass
    assert [args[-1] for args in cuda.arguments("set_rng_state")] == [0]  # device 0's state put back


def test_the_grad_scaler_is_on_for_fp16_only(monkeypatch):
    made = []

    class RecordingScaler:
        def __init__(self, device, enabled):
            made.append((device, enabled))
    monkeypatch.setattr(torch.amp, "GradScaler", RecordingScaler)
    layer = as_skip_convs(torch.nn.Linear(2, 2))
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        elite.Optimization.create(layer, smoke_config(), CUDA, dtype)
    assert made == [("cuda", True), ("cuda", False), ("cuda", False)]


def test_timing_synchronises_the_device_around_every_run(monkeypatch):
    cuda = FakeCuda(monkeypatch)
    ran = []
    elite.median_ms(lambda: ran.append(1), CUDA, repeats=3)
    assert len(ran) == 4 and cuda.arguments("synchronize") == [(CUDA,)] * 6  # a warm-up, then 3 timed runs


def test_an_fp16_decode_overflow_is_decoded_again_in_fp32(tiny_enhancer):
    real_decode, decoded_dtypes = tiny_enhancer.decode, []

    def overflowing_once(clean_latent, taps):
        decoded_dtypes.append(next(tiny_enhancer.vae.decoder.parameters()).dtype)
        output = real_decode(clean_latent, taps)
        return output if len(decoded_dtypes) > 1 else torch.full_like(output, float("inf"))
    tiny_enhancer.decode = overflowing_once
    tiny_enhancer.vae.half()  # frozen weights as on a T4; the LoRA weights stay fp32 in practice
    images = torch.rand(1, 3, 64, 64) * 2 - 1
    enhanced, redone = elite.enhance_batch(tiny_enhancer, images, torch.float16)
    assert redone and torch.isfinite(enhanced).all() and enhanced.dtype == torch.float32
    assert decoded_dtypes[1] == torch.float32  # the second decode ran with fp32 frozen weights
    assert next(tiny_enhancer.vae.decoder.parameters()).dtype == torch.float16  # and they are put back
