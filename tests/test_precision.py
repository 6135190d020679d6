"""The training precision follows the hardware: bfloat16 autocast only on CPUs that run it natively."""

from __future__ import annotations

import logging

import pytest
import torch

from scripts.workflows import precision as precision_module
from scripts.workflows.precision import cpu_bf16_reason, training_precision

ZEN4 = {"architecture": "x86_64", "cpu_name": "AMD EPYC 9R14", "avx2": True, "avx512_f": True, "avx512_bf16": True}
AVX2_ONLY = {"architecture": "x86_64", "cpu_name": "AMD EPYC 7B12", "avx2": True, "avx512_f": False,
             "avx512_bf16": False, "amx_bf16": False}
SAPPHIRE_RAPIDS = {"architecture": "x86_64", "cpu_name": "Intel Xeon", "avx512_f": True, "avx512_bf16": True,
                   "amx_bf16": True}
GRAVITON3 = {"architecture": "arm64", "cpu_name": "Neoverse-V1", "bf16": True, "sve_bf16": True}


@pytest.fixture
def cpu(monkeypatch):
    """Set what PyTorch reports about the CPU: ``cpu(capabilities, dispatch)``."""

    def set_cpu(capabilities: dict, dispatch: str = "AVX512") -> None:
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: dict(capabilities))
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: dispatch)
        precision_module._logged.clear()

    yield set_cpu
    precision_module._logged.clear()


@pytest.mark.parametrize("capabilities, dispatch, native", [
    (ZEN4, "AVX512", True),
    (SAPPHIRE_RAPIDS, "AVX512", True),
    (GRAVITON3, "SVE256", True),
    (AVX2_ONLY, "AVX2", False),
    (ZEN4, "AVX2", False),  # ATEN_CPU_CAPABILITY=avx2: the AVX-512 kernels are not used
    ({"architecture": "x86_64", "avx512_f": True, "avx512_bf16": False}, "AVX512", False),  # AVX-512, bf16 emulated
])
def test_native_bf16_is_read_from_what_pytorch_reports(cpu, capabilities, dispatch, native):
    cpu(capabilities, dispatch)
    found, reason = cpu_bf16_reason()
    assert found is native
    assert capabilities.get("cpu_name", "unknown CPU") in reason


@pytest.mark.parametrize("capabilities, dispatch, auto", [(ZEN4, "AVX512", "bfloat16"), (AVX2_ONLY, "AVX2", "float32")])
def test_cpu_auto_follows_the_cpu_and_true_false_override_it(cpu, capabilities, dispatch, auto):
    cpu(capabilities, dispatch)
    assert training_precision("cpu") == auto
    assert training_precision("cpu", cpu_bf16="auto") == auto
    for spelling in (True, "true", "True", " TRUE "):
        assert training_precision(torch.device("cpu"), cpu_bf16=spelling) == "bfloat16"
    for spelling in (False, "false", "False"):
        assert training_precision("cpu", cpu_bf16=spelling) == "float32"
    assert training_precision("cpu", amp=True, cpu_bf16=False) == "float32"  # amp is CUDA's


def test_cuda_takes_mixed_precision_unless_amp_is_false(cpu):
    cpu(AVX2_ONLY, "AVX2")
    assert training_precision("cuda") == "float16"
    assert training_precision("cuda:0", amp="true", cpu_bf16=True) == "float16"
    assert training_precision("cuda", amp=False) == "float32"


def test_a_bad_setting_is_one_line_naming_it(cpu):
    cpu(ZEN4)
    with pytest.raises(ValueError, match=r"^cpu_bf16 must be true, false or auto, got 'yes'$"):
        training_precision("cpu", cpu_bf16="yes")
    with pytest.raises(ValueError, match=r"^amp must be true, false or auto, got 1$"):
        training_precision("cuda", amp=1)


def test_the_choice_is_logged_once_with_its_reason(cpu, caplog):
    cpu(AVX2_ONLY, "AVX2")
    with caplog.at_level(logging.INFO, logger="scripts.workflows.precision"):
        for _ in range(3):
            training_precision("cpu")
    lines = [r.getMessage() for r in caplog.records if r.name == "scripts.workflows.precision"]
    assert lines == ["training precision: float32 (cpu_bf16 auto, AMD EPYC 7B12: no native bfloat16 instructions "
                     "(avx512_bf16/amx_bf16 absent))"]


@pytest.mark.parametrize("capabilities, dispatch, expected", [(ZEN4, "AVX512", "bfloat16"), (AVX2_ONLY, "AVX2", "float32")])
def test_train_yaml_trains_and_records_the_precision_of_the_cpu(cpu, bundle_root, tmp_path, capabilities, dispatch,
                                                                 expected):
    """train.yaml's default on each kind of CPU: the trainer's autocast, the fingerprint and MLflow agree."""
    from monai.bundle import ConfigParser

    from scripts.data.prepare import prepare_dataset

    cpu(capabilities, dispatch)
    data = prepare_dataset("phantom", tmp_path / "ph", num_cases=4, folds=2, seed=0)

    def parsed(*ids: str, **overrides):
        parser = ConfigParser()
        parser.read_config(str(bundle_root / "configs" / "train.yaml"))
        parser.update({"bundle_root": str(bundle_root), "dataset_dir": str(data), "device": "$torch.device('cpu')",
                       **overrides})
        return [parser.get_parsed_content(i) for i in ids]

    trainer_bf16, fingerprint, params = parsed("train#trainer#cpu_bf16", "fingerprint", "mlflow_params")
    assert trainer_bf16 is (expected == "bfloat16")
    assert fingerprint["precision"] == params["precision"] == expected
    (forced,) = parsed("fingerprint", cpu_bf16="false")
    assert forced["precision"] == "float32"
    (forced,) = parsed("train#trainer#cpu_bf16", cpu_bf16=True)
    assert forced is True
