"""MFU's denominator: the dense bf16 peak of the exact card, by the name CUDA reports."""
import pytest

from megadlm.train.metrics import peak_tflops_for


@pytest.mark.parametrize("name,peak", [
    ("NVIDIA H100 80GB HBM3", 989.0),  # SXM
    ("NVIDIA H100 PCIe", 756.0),
    ("NVIDIA H100 NVL", 835.0),
    ("NVIDIA H200", 989.0),
    ("NVIDIA H200 NVL", 835.0),
    ("NVIDIA GH200 480GB", 989.0),
    ("NVIDIA A100-SXM4-80GB", 312.0),
    ("NVIDIA A100 80GB PCIe", 312.0),
    ("NVIDIA B200", 2250.0),
    ("Tesla V100-SXM2-16GB", None),  # not in the table: no MFU rather than a wrong one
])
def test_peak_tflops_by_exact_device_name(name, peak):
    assert peak_tflops_for(name) == peak
