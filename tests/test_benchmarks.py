"""benchmarks/benchmark_pipeline.py's record of the machine it ran on."""

import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import benchmark_pipeline  # noqa: E402


def test_cpu_model_reads_name_and_clock_and_falls_back_without_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC 9654\ncpu MHz\t\t: 2396.400\n\n"
                       "processor\t: 1\nmodel name\t: AMD EPYC 9654\ncpu MHz\t\t: 2396.400\n")
    assert benchmark_pipeline.cpu_model(cpuinfo) == "AMD EPYC 9654, 2396.400 MHz"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU\n")
    assert benchmark_pipeline.cpu_model(cpuinfo) == "Some CPU"
    assert benchmark_pipeline.cpu_model(tmp_path / "missing") == platform.processor()
