"""Smoke tests for benchmarks/benchmark.py: its measuring functions on known workloads, and one tiny end-to-end run."""

import importlib.util
import json
import time
from pathlib import Path

import pytest
import torch


BENCHMARK_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "benchmark.py"


@pytest.fixture(scope="module")
def benchmark():
    spec = importlib.util.spec_from_file_location("tmca_benchmark", BENCHMARK_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def one_thread():
    """One torch thread (a 2-thread run on a shared 2-core machine stalls), restored afterwards."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_time_forwards_runs_round_robin_after_warmup(benchmark):
    calls = []
    forwards = {"a": lambda: calls.append("a"), "b": lambda: (calls.append("b"), time.sleep(0.02))}
    seconds = benchmark.time_forwards(forwards, repeats=3, warmup=1)
    assert calls == ["a", "b"] * 4
    assert {name: len(values) for name, values in seconds.items()} == {"a": 3, "b": 3}
    assert all(0.02 <= value < 1.0 for value in seconds["b"]), seconds["b"]  # the sleep is timed, in seconds
    assert all(value < 0.02 for value in seconds["a"]), seconds["a"]


def test_count_flops_of_linear_and_cpu_attention(benchmark):
    linear = torch.nn.Linear(16, 8)
    inputs = torch.randn(4, 16)
    with torch.inference_mode():
        assert benchmark.count_flops(lambda: linear(inputs)) == 2 * 4 * 16 * 8
        # Attention of 5 queries over 7 keys, 2 heads of 3 dims: QK^T and AV, 2 * 5 * 7 * 3 multiply-adds per head.
        query, key, value = torch.randn(1, 2, 5, 3), torch.randn(1, 2, 7, 3), torch.randn(1, 2, 7, 3)
        def attention():
            return torch.nn.functional.scaled_dot_product_attention(query, key, value)

        assert benchmark.count_flops(attention) == 2 * (2 * 2 * 5 * 7 * 3)


def test_peak_allocated_bytes_sees_the_high_water_mark(benchmark):
    def allocate():
        first = torch.empty(1 << 20, dtype=torch.uint8)
        second = torch.empty(2 << 20, dtype=torch.uint8)  # both alive: 3 MiB
        del first, second
        return torch.empty(1 << 20, dtype=torch.uint8)

    peak = benchmark.peak_allocated_bytes(allocate)
    assert peak is not None
    assert 3 << 20 <= peak < 4 << 20


def test_percentile_interpolates(benchmark):
    assert benchmark.percentile([4.0, 1.0, 3.0, 2.0, 5.0], 50) == 3.0
    assert benchmark.percentile([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0], 90) == pytest.approx(9.1)


def test_add_ratios_uses_the_reference_row_of_each_batch_size(benchmark):
    rows = [
        benchmark.summarise(name, "", batch, [seconds], flops, None, params)
        for name, batch, seconds, flops, params in [
            ("TMCA", 1, 0.1, 1e9, 100),
            ("Other", 1, 0.3, 4e9, 50),
            ("TMCA", 2, 0.2, 2e9, 100),
            ("Other", 2, 0.4, 8e9, 50),
        ]
    ]
    benchmark.add_ratios(rows, matmul_flops=20e9)
    other_1, other_2 = rows[1], rows[3]
    assert other_1["latency_ratio"] == pytest.approx(3.0) and other_2["latency_ratio"] == pytest.approx(2.0)
    assert other_1["flops_ratio"] == pytest.approx(4.0) and other_1["params_ratio"] == pytest.approx(0.5)
    assert rows[0]["percent_of_matmul"] == pytest.approx(50.0)  # 1e9 FLOPs in 0.1 s = 10 GFLOP/s of 20
    with pytest.raises(ValueError, match="No 'TMCA' row at batch size 2"):
        benchmark.add_ratios(rows[:2] + rows[3:], matmul_flops=20e9)


def test_parse_args_rejects_bad_sizes_and_always_runs_the_reference(benchmark):
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--batch_sizes", "0"])
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--image_size", "100"])
    assert benchmark.parse_args(["--models", "CLIPSeg"]).models == ["TMCA", "CLIPSeg"]


def test_tiny_quick_run_prints_every_row_with_ratios_from_the_same_run(benchmark, one_thread, tmp_path, capsys):
    output = tmp_path / "results.json"
    argv = ["--tiny", "--quick", "--threads", "1", "--batch_sizes", "1", "2", "--matmul_size", "128"]
    argv += ["--models", "TMCA", "Baseline", "CLIPSeg", "--output_json", str(output)]
    result = benchmark.main(argv)
    printed = capsys.readouterr().out

    assert json.loads(output.read_text())["rows"] == result["rows"]
    lines = printed.splitlines()
    table = [line for line in lines if line.startswith("| ") and not line.startswith(("| Model", "| ---"))]
    assert [line.split(" | ")[:2] for line in table] == [
        [f"| {model}", str(batch)] for batch in (1, 2) for model in ("TMCA", "Baseline", "CLIPSeg")
    ]
    rows = {(row["model"], row["batch_size"]): row for row in result["rows"]}
    for (_, batch), row in rows.items():
        reference = rows["TMCA", batch]
        assert row["latency_ratio"] == pytest.approx(row["latency_median_ms"] / reference["latency_median_ms"])
        assert row["flops_ratio"] == pytest.approx(row["flops"] / reference["flops"])
        assert len(row["latencies_ms"]) == 2 and row["flops"] > 0 and row["peak_memory_mib"] > 0
    assert rows["TMCA", 1]["latency_ratio"] == 1.0
    # The ablation drops the alignment heads: fewer parameters and FLOPs than TMCA, the same per image at each batch.
    assert rows["Baseline", 1]["params_ratio"] < 1 and rows["Baseline", 1]["flops_ratio"] < 1
    assert rows["TMCA", 2]["flops"] == 2 * rows["TMCA", 1]["flops"]
    assert len(result["matmul"]["gflops_per_s_during"]) == 2 * 2
