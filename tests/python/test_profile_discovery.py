"""Layer discovery and kinds on generic modules (general rules, no model special-cased)."""
import torch
from torch import nn

from memscale.testing import models
from memscale.profiler.profile import profile_dict
from memscale.profiler.discovery import discover_layers


def _names(graph: dict) -> list[str]:
    return [layer["name"] for layer in graph["layers"]]


def _by_name(graph: dict) -> dict:
    return {layer["name"]: layer for layer in graph["layers"]}


class Block(nn.Module):
    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ff(self.norm(x))


class Nested(nn.Module):
    """Blocks two containers deep, head defined before the body, an unused module."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(8, 3)
        self.unused = nn.Linear(8, 8)
        self.body = nn.Module()
        self.body.layers = nn.ModuleList(Block() for _ in range(3))
        self.body.final = nn.LayerNorm(8)
        self.scale = nn.Parameter(torch.ones(8))  # owned by the root, used in glue

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.scale
        for blk in self.body.layers:
            x = blk(x)
        return self.head(self.body.final(x)).sum()


def test_plain_sequential_is_split_into_children() -> None:
    g = profile_dict(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), torch.randn(3, 4))
    assert _names(g) == ["0", "1", "2"]
    assert [layer["kind"] for layer in g["layers"]] == ["other", "other", "lm_head"]


def test_single_leaf_model_is_one_root_layer() -> None:
    g = profile_dict(nn.Linear(4, 4), torch.randn(2, 4))
    assert _names(g) == [""]
    assert g["layers"][0]["param_bytes"] == (16 + 4) * 4


def test_nested_blocks_execution_order_orphan_params_and_unused_modules() -> None:
    m = Nested()
    g = profile_dict(m, torch.randn(2, 5, 8))
    assert _names(g) == ["body.layers.0", "body.layers.1", "body.layers.2", "body.final", "head", "unused"]
    by = _by_name(g)
    assert [by[f"body.layers.{i}"]["kind"] for i in range(3)] == ["block"] * 3
    assert by["head"]["kind"] == "lm_head"
    # the root's own parameter goes to the layer whose span first uses it (glue before layer 0)
    block_params = sum(p.numel() * 4 for p in m.body.layers[0].parameters())
    assert by["body.layers.0"]["param_bytes"] == block_params + 8 * 4
    assert by["unused"]["activation_bytes"] == by["unused"]["flops"] == 0
    assert sum(layer["param_bytes"] for layer in g["layers"]) == sum(p.numel() * 4 for p in m.parameters())
    assert by["body.layers.0"]["dims"]["intermediate"] == 32 and by["body.layers.0"]["dims"]["seq"] == 5


def test_single_block_list_and_shared_module() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(10, 8)
            self.blocks = nn.ModuleList([Block()])
            self.alias = self.emb  # the same module registered twice
            self.out = nn.Linear(8, 10, bias=False)
            self.out.weight = self.emb.weight  # tied weights

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.out(self.blocks[0](self.alias(ids))).sum()

    m = Tied()
    g = profile_dict(m, torch.randint(0, 10, (2, 4)))
    assert _names(g) == ["emb", "blocks.0", "out"]
    by = _by_name(g)
    assert by["emb"]["kind"] == "embedding" and by["emb"]["param_bytes"] == 80 * 4
    assert by["out"]["param_bytes"] == 0  # the tied weight is counted at its first owner
    assert sum(layer["param_bytes"] for layer in g["layers"]) == sum(p.numel() * 4 for p in m.parameters())


def test_zoo_kinds_and_tileable_axes() -> None:
    cases = {
        "resnet": {"conv1": ("conv", []), "bn1": ("norm", []), "layer1.0": ("block", []), "fc": ("lm_head", ["batch"])},
        "lstm": {"embedding": ("embedding", []), "lstm": ("recurrent", []), "head": ("lm_head", ["seq", "batch"])},
        "encoder": {"embeddings": ("embedding", []), "encoder.layer.3": ("block", []),
                    "cls": ("lm_head", ["seq", "batch"])},
        "vit": {"patch_embed": ("conv", []), "blocks.0": ("block", []), "norm": ("norm", []),
                "head": ("lm_head", ["batch"])},
        "t5": {"shared": ("embedding", []), "decoder.blocks.1": ("block", []), "lm_head": ("lm_head", ["seq", "batch"])},
    }
    for name, expected in cases.items():
        m = models.build(name)
        by = _by_name(profile_dict(m, models.example_inputs(name, m, batch=2)))
        for layer, (kind, axes) in expected.items():
            assert (by[layer]["kind"], by[layer]["tileable"]) == (kind, axes), (name, layer)


def test_vit_class_token_and_position_table_go_to_their_first_user() -> None:
    m = models.build("vit", depth=2)
    by = _by_name(profile_dict(m, models.example_inputs("vit", m, batch=2)))
    conv = sum(p.numel() * 4 for p in m.patch_embed.parameters())
    assert by["patch_embed"]["param_bytes"] == conv + (m.cls_token.numel() + m.pos_embed.numel()) * 4
    assert by["blocks.0"]["dims"]["seq"] == (32 // 4) ** 2 + 1 and by["blocks.0"]["dims"]["heads"] == 4


def test_shared_embedding_called_twice_accumulates_and_keeps_first_position() -> None:
    m = models.build("t5", num_layers=1, num_decoder_layers=1)
    ids, dec, labels = models.example_inputs("t5", m, batch=2, seq=8)
    g = profile_dict(m, (ids, dec, labels))
    assert g["layers"][0]["name"] == "shared"
    # each call's output is an input of the next layer, nothing of its own is saved; the
    # id tensors are example inputs (excluded), so the layer saves nothing itself
    assert g["layers"][0]["activation_bytes"] == 0


def test_discover_layers_rejects_non_modules() -> None:
    import pytest

    with pytest.raises(TypeError, match="model"):
        discover_layers("not a module")  # type: ignore[arg-type]
