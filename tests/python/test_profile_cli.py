"""``memscale profile`` CLI."""
import json

import pytest
import torch

import memscale
from memscale.testing import models
from memscale.cli import main
from memscale.profiler.profile import profile_dict


def test_profile_json_matches_the_api(capsys: pytest.CaptureFixture, tmp_path) -> None:
    out_file = tmp_path / "g.json"
    rc = main(["profile", "--model", "memscale.testing.models.gpt:build", "--arg", "n_layers=2", "--input-shape", "2,16",
               "--input-dtype", "int64", "--json", "--out", str(out_file)])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out_file.read_text())
    model = models.build("gpt", n_layers=2)
    assert printed == profile_dict(model, (torch.zeros(2, 16, dtype=torch.int64),))
    memscale.ModelGraph.from_json(out_file.read_text())


def test_profile_table_on_meta_and_inference(capsys: pytest.CaptureFixture) -> None:
    rc = main(["profile", "--model", "memscale.testing.models.llama:build", "--arg", "num_hidden_layers=2", "--meta",
               "--inference", "--input-shape", "1x8", "--input-dtype", "int64"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "training=False" in out and "layers.1" in out and "lm_head" in out


@pytest.mark.parametrize("argv, message", [
    (["--model", "no_such_module:f", "--input-shape", "2"], "cannot import"),
    (["--model", "memscale.testing.models.gpt", "--input-shape", "2"], "MODULE:FACTORY"),
    (["--model", "memscale.testing.models.gpt:build", "--input-shape", "2,a"], "--input-shape"),
    (["--model", "memscale.testing.models.gpt:build", "--arg", "bogus=1", "--input-shape", "2,4"], "bogus"),
])
def test_bad_arguments_exit_1_with_a_message(argv, message, capsys: pytest.CaptureFixture) -> None:
    assert main(["profile", *argv]) == 1
    assert message in capsys.readouterr().err
