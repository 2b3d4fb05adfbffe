import logging
import subprocess
import sys

import pytest

import memscale
from memscale import _C


def test_version_and_console_entry_point():
    out = subprocess.run([sys.executable, "-m", "memscale", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"memscale {memscale.__version__}"
    helped = subprocess.run([sys.executable, "-m", "memscale", "--help"], capture_output=True, text=True, check=True)
    assert "demo" in helped.stdout


def test_cpp_log_messages_reach_python_logging_with_levels(caplog):
    with caplog.at_level(logging.DEBUG, logger="memscale"):
        _C._log(logging.INFO, "hello {from} C++")
        _C._log(logging.WARNING, "careful")
        _C._log(logging.DEBUG, "details")
    records = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "memscale"]
    assert (logging.INFO, "hello {from} C++") in records
    assert (logging.WARNING, "careful") in records
    assert (logging.DEBUG, "details") in records


def test_cpp_errors_are_the_python_classes():
    with pytest.raises(memscale.ConfigError, match="graph: not valid JSON"):
        memscale.ModelGraph.from_json("{broken")
    assert issubclass(memscale.ConfigError, ValueError)
    assert issubclass(memscale.InfeasibleBudgetError, memscale.MemScaleError)
    err = memscale.InfeasibleBudgetError("too small", 123)
    assert err.min_budget_bytes == 123


def test_core_types_round_trip_through_python():
    graph_json = (
        '{"model_name": "M", "batch": 2, "seq": 8, "layers": [{"index": 0, "name": "a", "kind": "mlp",'
        ' "param_bytes": 10, "activation_bytes": 5}]}'
    )
    g = memscale.ModelGraph.from_json(graph_json)
    assert g.layers[0].param_bytes == 10 and g.layers[0].kind == "mlp"
    assert memscale.ModelGraph.from_json(g.to_json()) == g
    hw = memscale.Hardware.from_json('{"devices": [], "host_total_bytes": 1000}')
    assert hw.gpu_count == 0 and hw.planning_device_bytes == 1000
    assert memscale.Hardware.from_json(hw.to_json()) == hw
